# ngx_module/: the nginx dynamic module, built through Debian's nginx-dev build system.
