# workerd/: the daemon and its CLI (`workerd separate` today).
