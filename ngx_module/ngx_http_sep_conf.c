/*
 * ngx_http_sep_conf.c - what `nginx -t` and a starting worker check in the module's
 * configuration, so that a setting that would break every request is refused or said
 * at start, not found by the first client:
 *
 *   - value bounds of the numeric directives, checked as each directive is read (post
 *     handlers), so the error names the directive's own file and line;
 *   - sep_spool (an absolute path) and sep_stems_location (starts and ends with "/"),
 *     checked the same way;
 *   - at the end of the configuration (nginx -t shows them): a warning when a sep_api
 *     location cannot see "/v1/" paths (e.g. `location /api/`: every request would be
 *     404), and when sep_stems_location names no location of the server (every stem
 *     download would be nginx's 404);
 *   - in each worker at start, as the workers' user: sep_spool must be a directory the
 *     worker can write (else every upload fails: logged once, loudly), and a
 *     client_body_temp_path on another filesystem than the spool means one more copy
 *     of each raw upload (a warning).
 */
#include "ngx_module/ngx_http_sep_module.h"

#include <sys/stat.h>
#include <unistd.h>

/* ---- bounds, checked as each directive is read ------------------------------------ */

char *ngx_http_sep_check_bounds(ngx_conf_t *cf, void *post, void *data)
{
    ngx_http_sep_bounds_t *b = post;
    ngx_str_t *value = cf->args->elts;
    int64_t v;

    switch (b->kind) {
    case SEP_BOUND_SEC:
        v = (int64_t) * (time_t *)data;
        break;
    case SEP_BOUND_MSEC:
        v = (int64_t) * (ngx_msec_t *)data;
        break;
    case SEP_BOUND_SIZE:
        v = (int64_t) * (size_t *)data;
        break;
    default:
        v = (int64_t) * (ngx_int_t *)data;
        break;
    }
    if (v < b->low || v > b->high) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must be %s, not \"%V\"", &value[0],
                           b->range, &value[1]);
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

char *ngx_http_sep_check_spool(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t *spool = data;

    while (spool->len > 1 && spool->data[spool->len - 1] == '/') {
        spool->len--;
    }
    if (spool->len == 0 || spool->data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sep_spool \"%V\" must be an absolute path",
                           spool);
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

char *ngx_http_sep_check_stems_location(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t *loc = data;

    if (loc->len < 2 || loc->data[0] != '/' || loc->data[loc->len - 1] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sep_stems_location \"%V\" must start and end with \"/\"", loc);
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

/* ---- the sep_api locations, recorded as their directive is read ------------------- */

ngx_int_t ngx_http_sep_conf_add_api(ngx_conf_t *cf, ngx_http_sep_main_conf_t *mcf,
                                    ngx_http_sep_loc_conf_t *lcf)
{
    ngx_http_sep_api_loc_t *api;
    ngx_http_core_srv_conf_t *cscf;

    if (mcf->apis == NULL) {
        mcf->apis = ngx_array_create(cf->pool, 2, sizeof(ngx_http_sep_api_loc_t));
        if (mcf->apis == NULL) {
            return NGX_ERROR;
        }
    }
    api = ngx_array_push(mcf->apis);
    if (api == NULL) {
        return NGX_ERROR;
    }
    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);
    api->lcf = lcf;
    api->clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    api->server = cscf->ctx->loc_conf[ngx_http_core_module.ctx_index];
    api->file = cf->conf_file->file.name;
    api->line = cf->conf_file->line;
    return NGX_OK;
}

/* The prefix location named exactly `name` in a static location tree, or NULL. */
static ngx_http_core_loc_conf_t *ngx_http_sep_tree_find(ngx_http_location_tree_node_t *node,
                                                        ngx_str_t *name)
{
    ngx_http_core_loc_conf_t *clcf, *found;

    for (; node; node = node->right) {
        clcf = node->inclusive ? node->inclusive : node->exact;
        if (clcf && clcf->name.len == name->len &&
            ngx_strncmp(clcf->name.data, name->data, name->len) == 0) {
            return clcf;
        }
        if ((found = ngx_http_sep_tree_find(node->left, name)) != NULL ||
            (found = ngx_http_sep_tree_find(node->tree, name)) != NULL) {
            return found;
        }
    }
    return NULL;
}

/* The stems location of an API location, when it exists: it must be internal (else the
 * whole spool, every client's upload, is public), and its alias should be the spool. */
static ngx_int_t ngx_http_sep_check_stems(ngx_conf_t *cf, ngx_http_sep_api_loc_t *api,
                                          ngx_http_core_loc_conf_t *stems)
{
    ngx_str_t root = stems->root;

    if (!stems->internal) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "the stems location \"%V\" of the sep_api location \"%V\" (%V:%ui) is "
                      "not internal: it would serve the whole spool, every client's upload, "
                      "to anyone; add `internal;` to it",
                      &stems->name, &api->clcf->name, &api->file, api->line);
        return NGX_ERROR;
    }
    if (stems->alias && stems->root_lengths == NULL) {
        while (root.len > 1 && root.data[root.len - 1] == '/') {
            root.len--;
        }
        if (root.len != api->lcf->spool.len ||
            ngx_strncmp(root.data, api->lcf->spool.data, root.len) != 0) {
            ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                          "the stems location \"%V\" has alias \"%V\", not sep_spool \"%V\" "
                          "of the sep_api location \"%V\" (%V:%ui): stem downloads will be 404",
                          &stems->name, &stems->root, &api->lcf->spool, &api->clcf->name,
                          &api->file, api->line);
        }
    }
    return NGX_OK;
}

/* Checks at the end of the configuration (after the location trees are built):
 * warnings, and NGX_ERROR for a stems location that would make the spool public. */
ngx_int_t ngx_http_sep_conf_check_locations(ngx_conf_t *cf, ngx_http_sep_main_conf_t *mcf)
{
    ngx_http_sep_api_loc_t *api;
    ngx_http_core_loc_conf_t *stems;
    ngx_str_t *name;
    ngx_uint_t i;
    static ngx_str_t v1 = ngx_string("/v1/");
    static ngx_str_t metrics = ngx_string("/metrics");

    if (mcf->apis == NULL) {
        return NGX_OK;
    }
    api = mcf->apis->elts;
    for (i = 0; i < mcf->apis->nelts; i++) {
        name = &api[i].clcf->name;
#if (NGX_PCRE)
        if (api[i].clcf->regex) {
            continue; /* a regex may well match /v1/ paths */
        }
#endif
        if (!api[i].clcf->named &&
            !(name->len <= v1.len && ngx_strncmp(name->data, v1.data, name->len) == 0) &&
            !(name->len >= v1.len && ngx_strncmp(name->data, v1.data, v1.len) == 0) &&
            !(name->len <= metrics.len && ngx_strncmp(name->data, metrics.data, name->len) == 0)) {
            ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                          "sep_api in location \"%V\" (%V:%ui) answers only /metrics and "
                          "paths under \"/v1/\", which this location does not receive: every "
                          "request here will be 404",
                          name, &api[i].file, api[i].line);
        }
        stems =
            ngx_http_sep_tree_find(api[i].server->static_locations, &api[i].lcf->stems_location);
        if (stems && ngx_http_sep_check_stems(cf, &api[i], stems) != NGX_OK) {
            return NGX_ERROR;
        }
        if (stems == NULL
#if (NGX_PCRE)
            && api[i].server->regex_locations == NULL
#endif
        ) {
            ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                          "sep_stems_location \"%V\" of the sep_api location \"%V\" (%V:%ui) "
                          "names no location of its server: stem downloads will be 404; "
                          "add `location %V { internal; alias <sep_spool>/; }`",
                          &api[i].lcf->stems_location, name, &api[i].file, api[i].line,
                          &api[i].lcf->stems_location);
        }
    }
    return NGX_OK;
}

/* In each worker at start (as the workers' user). */
void ngx_http_sep_conf_check_spools(ngx_cycle_t *cycle, ngx_http_sep_main_conf_t *mcf)
{
    ngx_http_sep_api_loc_t *api;
    ngx_uint_t i, j;
    struct stat spool_st, temp_st;
    u_char path[NGX_MAX_PATH + 1];
    ngx_str_t *temp;

    if (mcf->apis == NULL) {
        return;
    }
    api = mcf->apis->elts;
    for (i = 0; i < mcf->apis->nelts; i++) {
        for (j = 0; j < i; j++) { /* each spool once */
            if (api[j].lcf->spool.len == api[i].lcf->spool.len &&
                ngx_strncmp(api[j].lcf->spool.data, api[i].lcf->spool.data,
                            api[i].lcf->spool.len) == 0) {
                break;
            }
        }
        if (j < i || api[i].lcf->spool.len > NGX_MAX_PATH) {
            continue;
        }
        ngx_cpystrn(path, api[i].lcf->spool.data, api[i].lcf->spool.len + 1);
        if (stat((char *)path, &spool_st) != 0 || !S_ISDIR(spool_st.st_mode) ||
            access((char *)path, W_OK | X_OK) != 0) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "sep: sep_spool \"%s\" (location \"%V\") is not a directory this "
                          "worker (uid %d) can write: every upload will fail until it is",
                          path, &api[i].clcf->name, (int)geteuid());
            continue;
        }
        temp = &api[i].clcf->client_body_temp_path->name;
        if (temp->len && temp->len <= NGX_MAX_PATH) {
            ngx_cpystrn(path, temp->data, temp->len + 1);
            if (stat((char *)path, &temp_st) == 0 && temp_st.st_dev != spool_st.st_dev) {
                ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                              "sep: client_body_temp_path \"%V\" is on another filesystem "
                              "than sep_spool \"%V\": each raw upload is copied once more "
                              "instead of renamed",
                              temp, &api[i].lcf->spool);
            }
        }
    }
}
