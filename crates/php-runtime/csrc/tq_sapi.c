/* tqserver-php's SAPI: PHP as php-cgi runs it in FastCGI mode, with the
 * FastCGI connection on the Rust side.
 *
 * What an application sees is meant to be what php-cgi 8.2 gives it: the SAPI
 * name "cgi-fcgi" (it is on OPcache's allow-list, and WordPress and others
 * have branches for it), the cgi.fix_pathinfo split of SCRIPT_FILENAME and
 * PATH_INFO with its ORIG_* variables, $_SERVER built from the process
 * environment and then the FastCGI parameters, a "Status:" head line,
 * "No input file specified." and "Access denied.", .user.ini files, and
 * warnings sent to the web server as FCGI_STDERR. The behaviour follows
 * php-src's sapi/cgi/cgi_main.c, written afresh for this file's structure.
 *
 * See tq_sapi.h for the rule that keeps longjmp away from Rust frames. */

#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "php.h"
#include "SAPI.h"
#include "php_main.h"
#include "php_variables.h"
#include "php_ini.h"
#include "php_globals.h"
#include "php_output.h"
#include "zend_ini.h"
#include "zend_ini_scanner.h"
#include "zend_stream.h"
#include "fopen_wrappers.h"
#include "ext/standard/info.h"
#include "ext/standard/dl.h"
#include "ext/standard/head.h"
#include "ext/random/php_random.h"
#include "ext/spl/spl_exceptions.h"
#include "zend_exceptions.h"

#include "tq_sapi.h"

/* ------------------------------------------------------------------------ */
/* The request's environment: its FastCGI parameters, which the path fix-up
 * edits as php-cgi's does. php-cgi keeps them in a hash whose iteration runs
 * from the newest entry to the oldest, an updated entry keeps its place, and
 * a deleted one that is set again counts as new; $_SERVER's order follows
 * from that, so this list keeps the same rules. */

struct tq_var {
	char *name;
	size_t name_len;
	char *value; /* NUL-terminated; NULL once deleted */
	size_t value_len;
};

static struct {
	struct tq_var *vars;
	size_t len;
	size_t cap;
} env;

static void env_clear(void)
{
	for (size_t i = 0; i < env.len; i++) {
		free(env.vars[i].name);
		free(env.vars[i].value);
	}
	env.len = 0;
}

static struct tq_var *env_find(const char *name, size_t name_len)
{
	for (size_t i = env.len; i > 0; i--) {
		struct tq_var *var = &env.vars[i - 1];
		if (var->value && var->name_len == name_len && memcmp(var->name, name, name_len) == 0) {
			return var;
		}
	}
	return NULL;
}

static char *dup_bytes(const char *bytes, size_t len)
{
	char *copy = malloc(len + 1);
	if (!copy) {
		abort();
	}
	memcpy(copy, bytes, len);
	copy[len] = 0;
	return copy;
}

/* Sets (value non-NULL) or deletes a variable; returns its stored value. */
static char *env_put(const char *name, size_t name_len, const char *value, size_t value_len)
{
	struct tq_var *var = env_find(name, name_len);
	if (!value) {
		if (var) {
			free(var->value);
			var->value = NULL;
			var->value_len = 0;
		}
		return NULL;
	}
	if (var) {
		char *old = var->value;
		var->value = dup_bytes(value, value_len);
		var->value_len = value_len;
		free(old);
		return var->value;
	}
	if (env.len == env.cap) {
		size_t cap = env.cap ? env.cap * 2 : 64;
		struct tq_var *vars = realloc(env.vars, cap * sizeof(*vars));
		if (!vars) {
			abort();
		}
		env.vars = vars;
		env.cap = cap;
	}
	var = &env.vars[env.len++];
	var->name = dup_bytes(name, name_len);
	var->name_len = name_len;
	var->value = dup_bytes(value, value_len);
	var->value_len = value_len;
	return var->value;
}

static char *env_get(const char *name)
{
	struct tq_var *var = env_find(name, strlen(name));
	return var ? var->value : NULL;
}

static char *env_set(const char *name, const char *value)
{
	return env_put(name, strlen(name), value, value ? strlen(value) : 0);
}

/* ------------------------------------------------------------------------ */
/* Settings of the "cgi-fcgi" module, with php-cgi's names and defaults. */

typedef struct {
	bool rfc2616_headers;
	bool nph;
	bool check_shebang_line;
	bool fix_pathinfo;
	bool discard_path;
	bool fcgi_logging;
	bool force_redirect;
	char *redirect_status_env;
	HashTable user_config_cache;
} tq_cgi_globals;

static tq_cgi_globals cgi;

/* The request in progress: NULL between requests. */
static const struct tq_io *io;
static bool finished;

/* Worker mode (tq_php_worker): the worker script runs as one long request
 * with no client, and each frankenphp_handle_request() call runs one client
 * request inside it. */
static struct {
	/* tq_php_worker is running. */
	bool active;
	/* The script booted: it asked for its first request. */
	bool booted;
	/* A request context (output layer, SAPI state) is active; between two
	 * requests there is none, as in FrankenPHP. */
	bool context;
	/* A client request's callback runs. */
	bool in_request;
	/* The worker script's own parameters, for the contexts it runs in
	 * outside client requests (Rust keeps them for the whole run). */
	const struct tq_param *boot;
	size_t boot_count;
} worker;

PHP_INI_BEGIN()
	STD_PHP_INI_BOOLEAN("cgi.rfc2616_headers", "0", PHP_INI_ALL, OnUpdateBool, rfc2616_headers, tq_cgi_globals, cgi)
	STD_PHP_INI_BOOLEAN("cgi.nph", "0", PHP_INI_ALL, OnUpdateBool, nph, tq_cgi_globals, cgi)
	STD_PHP_INI_BOOLEAN("cgi.check_shebang_line", "1", PHP_INI_SYSTEM, OnUpdateBool, check_shebang_line, tq_cgi_globals, cgi)
	STD_PHP_INI_BOOLEAN("cgi.force_redirect", "1", PHP_INI_SYSTEM, OnUpdateBool, force_redirect, tq_cgi_globals, cgi)
	STD_PHP_INI_ENTRY("cgi.redirect_status_env", NULL, PHP_INI_SYSTEM, OnUpdateString, redirect_status_env, tq_cgi_globals, cgi)
	STD_PHP_INI_BOOLEAN("cgi.fix_pathinfo", "1", PHP_INI_SYSTEM, OnUpdateBool, fix_pathinfo, tq_cgi_globals, cgi)
	STD_PHP_INI_BOOLEAN("cgi.discard_path", "0", PHP_INI_SYSTEM, OnUpdateBool, discard_path, tq_cgi_globals, cgi)
	STD_PHP_INI_BOOLEAN("fastcgi.logging", "1", PHP_INI_SYSTEM, OnUpdateBool, fcgi_logging, tq_cgi_globals, cgi)
PHP_INI_END()

/* ------------------------------------------------------------------------ */
/* SAPI callbacks. */

static size_t tq_ub_write(const char *str, size_t len)
{
	if (!io || finished) {
		/* After fastcgi_finish_request() output goes nowhere, quietly. */
		return len;
	}
	size_t taken = io->write(io->ctx, str, len);
	if (taken < len) {
		php_handle_aborted_connection();
	}
	return taken;
}

static void tq_flush(void *server_context)
{
	(void)server_context;
	if (io && !finished && io->flush(io->ctx) != 0) {
		php_handle_aborted_connection();
	}
}

static const struct {
	int code;
	const char *reason;
} reasons[] = {
	{200, "OK"}, {201, "Created"}, {202, "Accepted"}, {203, "Non-Authoritative Information"},
	{204, "No Content"}, {205, "Reset Content"}, {206, "Partial Content"},
	{300, "Multiple Choices"}, {301, "Moved Permanently"}, {302, "Found"}, {303, "See Other"},
	{304, "Not Modified"}, {305, "Use Proxy"}, {307, "Temporary Redirect"},
	{308, "Permanent Redirect"}, {400, "Bad Request"}, {401, "Unauthorized"},
	{402, "Payment Required"}, {403, "Forbidden"}, {404, "Not Found"},
	{405, "Method Not Allowed"}, {406, "Not Acceptable"}, {407, "Proxy Authentication Required"},
	{408, "Request Time-out"}, {409, "Conflict"}, {410, "Gone"}, {411, "Length Required"},
	{412, "Precondition Failed"}, {413, "Request Entity Too Large"}, {414, "Request-URI Too Large"},
	{415, "Unsupported Media Type"}, {428, "Precondition Required"}, {429, "Too Many Requests"},
	{431, "Request Header Fields Too Large"}, {451, "Unavailable For Legal Reasons"},
	{500, "Internal Server Error"}, {501, "Not Implemented"}, {502, "Bad Gateway"},
	{503, "Service Unavailable"}, {504, "Gateway Time-out"}, {505, "HTTP Version not supported"},
	{511, "Network Authentication Required"}, {0, NULL},
};

static bool starts_with_ci(const char *text, size_t len, const char *prefix)
{
	size_t plen = strlen(prefix);
	return len > plen && strncasecmp(text, prefix, plen) == 0;
}

static void write_head(const char *bytes, size_t len)
{
	PHPWRITE_H(bytes, len);
}

/* The CGI response head: a Status line when the code is not 200 (the first
 * "Status:" header the script set wins over the code), then the headers,
 * with no Content-Type on a 304. */
static int tq_send_headers(sapi_headers_struct *headers)
{
	if (SG(request_info).no_headers == 1) {
		return SAPI_HEADER_SENT_SUCCESSFULLY;
	}
	int status = SG(sapi_headers).http_response_code;
	bool status_written = false;
	char line[1024];

	if (cgi.nph || status != 200) {
		const char *status_line = SG(sapi_headers).http_status_line;
		const char *space = status_line ? strchr(status_line, ' ') : NULL;
		int len = -1;
		bool script_has_status = false;

		if (cgi.rfc2616_headers && status_line) {
			len = snprintf(line, sizeof(line), "%s\r\n", status_line);
			if (space) {
				status = atoi(space + 1);
			}
		} else if (space && space - status_line >= 5 && strncasecmp(status_line, "HTTP/", 5) == 0) {
			len = snprintf(line, sizeof(line), "Status:%s\r\n", space);
			status = atoi(space + 1);
		} else {
			zend_llist_position pos;
			for (sapi_header_struct *h = zend_llist_get_first_ex(&headers->headers, &pos); h;
			     h = zend_llist_get_next_ex(&headers->headers, &pos)) {
				if (starts_with_ci(h->header, h->header_len, "Status:")) {
					script_has_status = true;
					break;
				}
			}
			if (!script_has_status) {
				const char *reason = NULL;
				for (int i = 0; reasons[i].code; i++) {
					if (reasons[i].code == status) {
						reason = reasons[i].reason;
						break;
					}
				}
				len = reason ? snprintf(line, sizeof(line), "Status: %d %s\r\n", status, reason)
				             : snprintf(line, sizeof(line), "Status: %d\r\n", status);
			}
		}
		if (!script_has_status && len >= 0) {
			if ((size_t)len >= sizeof(line)) {
				len = sizeof(line) - 1;
			}
			write_head(line, (size_t)len);
			status_written = true;
		}
	}

	zend_llist_position pos;
	for (sapi_header_struct *h = zend_llist_get_first_ex(&headers->headers, &pos); h;
	     h = zend_llist_get_next_ex(&headers->headers, &pos)) {
		if (!h->header_len) {
			continue;
		}
		if (starts_with_ci(h->header, h->header_len, "Status:")) {
			if (status_written) {
				continue;
			}
			status_written = true;
		} else if (status == 304 && starts_with_ci(h->header, h->header_len, "Content-Type:")) {
			continue;
		}
		write_head(h->header, h->header_len);
		write_head("\r\n", 2);
	}
	write_head("\r\n", 2);
	return SAPI_HEADER_SENT_SUCCESSFULLY;
}

static size_t tq_read_post(char *buffer, size_t count)
{
	if (!io) {
		return 0;
	}
	size_t remaining = (size_t)(SG(request_info).content_length - SG(read_post_bytes));
	if (count > remaining) {
		count = remaining;
	}
	size_t done = 0;
	while (done < count) {
		size_t got = io->read(io->ctx, buffer + done, count - done);
		if (got == 0) {
			break;
		}
		done += got;
	}
	return done;
}

static char *tq_read_cookies(void)
{
	return env_get("HTTP_COOKIE");
}

static char *tq_getenv(const char *name, size_t name_len)
{
	struct tq_var *var = env_find(name, name_len);
	if (var) {
		return var->value;
	}
	return getenv(name);
}

static void (*original_import)(zval *array) = NULL;

/* $_SERVER (and $_ENV): the process environment, then the parameters. */
static void tq_import_environment(zval *array)
{
	const char *order = PG(variables_order);
	if (order && (strchr(order, 'E') || strchr(order, 'e'))) {
		if (Z_TYPE(PG(http_globals)[TRACK_VARS_ENV]) != IS_ARRAY) {
			zend_is_auto_global(ZSTR_KNOWN(ZEND_STR_AUTOGLOBAL_ENV));
		}
		if (Z_TYPE(PG(http_globals)[TRACK_VARS_ENV]) == IS_ARRAY &&
		    Z_ARR_P(array) != Z_ARR(PG(http_globals)[TRACK_VARS_ENV])) {
			zend_array_destroy(Z_ARR_P(array));
			Z_ARR_P(array) = zend_array_dup(Z_ARR(PG(http_globals)[TRACK_VARS_ENV]));
			return;
		}
	}
	original_import(array);
	bool is_env = Z_ARR_P(array) == Z_ARR(PG(http_globals)[TRACK_VARS_ENV]);
	for (size_t i = env.len; i > 0; i--) {
		struct tq_var *var = &env.vars[i - 1];
		if (!var->value) {
			continue;
		}
		char *value = var->value;
		size_t new_len;
		if (sapi_module.input_filter(is_env ? PARSE_ENV : PARSE_SERVER, var->name, &value, strlen(value), &new_len)) {
			php_register_variable_safe(var->name, value, new_len, array);
		}
	}
}

static void tq_register_variables(zval *array)
{
	php_import_environment_variables(array);

	char *request_uri = SG(request_info).request_uri;
	char *self;
	size_t self_len;
	bool allocated = false;
	if (cgi.fix_pathinfo) {
		char *path_info = env_get("PATH_INFO");
		if (path_info && request_uri) {
			size_t a = strlen(request_uri), b = strlen(path_info);
			self = emalloc(a + b + 1);
			memcpy(self, request_uri, a);
			memcpy(self + a, path_info, b + 1);
			self_len = a + b;
			allocated = true;
		} else if (path_info) {
			self = path_info;
			self_len = strlen(path_info);
		} else if (request_uri) {
			self = request_uri;
			self_len = strlen(request_uri);
		} else {
			self = "";
			self_len = 0;
		}
	} else {
		self = request_uri ? request_uri : "";
		self_len = strlen(self);
	}
	char *filtered = self;
	if (sapi_module.input_filter(PARSE_SERVER, "PHP_SELF", &filtered, self_len, &self_len)) {
		php_register_variable_safe("PHP_SELF", filtered, self_len, array);
	}
	if (allocated) {
		efree(self);
	}
}

static void tq_log_message(const char *message, int syslog_type)
{
	(void)syslog_type;
	if (io && cgi.fcgi_logging) {
		io->log(io->ctx, message, strlen(message));
	} else {
		fprintf(stderr, "%s\n", message);
	}
}

/* .user.ini files from DOCUMENT_ROOT down to the script's directory, cached
 * per directory for user_ini.cache_ttl seconds. */
struct user_config {
	time_t expires;
	HashTable *settings;
};

static void user_config_dtor(zval *zv)
{
	struct user_config *entry = Z_PTR_P(zv);
	zend_hash_destroy(entry->settings);
	free(entry->settings);
	free(entry);
}

static void activate_user_config(char *dir, size_t dir_len, const char *doc_root, size_t doc_root_len)
{
	struct user_config *entry = zend_hash_str_find_ptr(&cgi.user_config_cache, dir, dir_len);
	if (!entry) {
		entry = pemalloc(sizeof(*entry), 1);
		entry->expires = 0;
		entry->settings = pemalloc(sizeof(HashTable), 1);
		zend_hash_init(entry->settings, 8, NULL, (dtor_func_t)config_zval_dtor, 1);
		zend_hash_str_update_ptr(&cgi.user_config_cache, dir, dir_len, entry);
	}
	time_t now = (time_t)sapi_get_request_time();
	if (now > entry->expires) {
		zend_hash_clean(entry->settings);
		char *resolved = NULL;
		if (!IS_ABSOLUTE_PATH(dir, dir_len)) {
			resolved = tsrm_realpath(dir, NULL);
			if (!resolved) {
				return;
			}
			dir = resolved;
			dir_len = strlen(resolved);
		}
		/* Inside the document root: every directory from it down; outside:
		 * only the script's own directory. */
		size_t common = dir_len > doc_root_len ? doc_root_len : dir_len;
		const char *longer = dir_len > doc_root_len ? dir : doc_root;
		const char *shorter = dir_len > doc_root_len ? doc_root : dir;
		if (strncmp(shorter, longer, common) == 0) {
			char *cursor = (char *)longer + doc_root_len;
			while ((cursor = strchr(cursor, '/')) != NULL) {
				*cursor = 0;
				php_parse_user_ini_file(longer, PG(user_ini_filename), entry->settings);
				*cursor = '/';
				cursor++;
			}
		} else {
			php_parse_user_ini_file(dir, PG(user_ini_filename), entry->settings);
		}
		if (resolved) {
			efree(resolved);
		}
		entry->expires = now + PG(user_ini_cache_ttl);
	}
	php_ini_activate_config(entry->settings, PHP_INI_PERDIR, PHP_INI_STAGE_HTACCESS);
}

/* php-fpm's PHP_VALUE and PHP_ADMIN_VALUE parameters: "key=value" lines
 * that the web server sends with a request (nginx: fastcgi_param PHP_VALUE).
 * php-fpm writes them into the process's master values, so they stay for
 * every later request the child serves, whatever site sent it (the known
 * leak between sites). Here they are request values: PHP restores them when
 * the request ends. PHP_VALUE may set only what ini_set() may set;
 * PHP_ADMIN_VALUE may set anything and locks it for the request (the
 * ACTIVATE stage with SYSTEM mode makes the entry SYSTEM-only until it is
 * restored), so neither .user.ini nor ini_set() can change it. Extensions
 * and the disable_* lists act once per process in php-fpm; per request they
 * cannot, so they are refused with a log line. php-cgi ignores both
 * parameters. */

static void log_fastcgi_ini(const char *param, const char *key, const char *why)
{
	char *line;
	spprintf(&line, 0, "%s: %s '%s'", param, why, key);
	tq_log_message(line, 0);
	efree(line);
}

struct fastcgi_ini {
	const char *param;
	int mode;
};

static void fastcgi_ini_entry(zval *key, zval *value, zval *unused, int type, void *arg)
{
	(void)unused;
	const struct fastcgi_ini *ini = arg;
	if (type != ZEND_INI_PARSER_ENTRY || !key || !value) {
		log_fastcgi_ini(ini->param, key ? Z_STRVAL_P(key) : "", "only key=value lines are allowed, ignored");
		return;
	}
	const char *name = Z_STRVAL_P(key);
	if (!strcmp(name, "extension") || !strcmp(name, "zend_extension")
		|| !strcmp(name, "disable_functions") || !strcmp(name, "disable_classes")) {
		log_fastcgi_ini(ini->param, name, "cannot be set per request (use php.settings), ignored");
		return;
	}
	if (zend_alter_ini_entry_chars(Z_STR_P(key), Z_STRVAL_P(value), Z_STRLEN_P(value), ini->mode,
			ZEND_INI_STAGE_ACTIVATE) == FAILURE) {
		log_fastcgi_ini(ini->param, name, ini->mode == ZEND_INI_USER
			? "unknown, or not settable by PHP_VALUE (try PHP_ADMIN_VALUE), ignored"
			: "unknown or rejected, ignored");
	}
}

static void apply_fastcgi_ini(const char *param, int mode)
{
	char *lines = env_get(param);
	if (!lines || !*lines) {
		return;
	}
	struct fastcgi_ini ini = { param, mode };
	char *text;
	spprintf(&text, 0, "%s\n", lines);
	zend_parse_ini_string(text, 1, ZEND_INI_SCANNER_NORMAL, fastcgi_ini_entry, &ini);
	efree(text);
}

static int tq_activate(void)
{
	/* A worker's settings are those it booted with and what it set since:
	 * per-request ones would pile up, as PHP restores them only when the
	 * worker script ends. */
	if (worker.booted) {
		return SUCCESS;
	}
	/* Before the per-directory settings, as php-fpm applies them: .user.ini
	 * overrides PHP_VALUE and cannot override PHP_ADMIN_VALUE. */
	apply_fastcgi_ini("PHP_VALUE", ZEND_INI_USER);
	apply_fastcgi_ini("PHP_ADMIN_VALUE", ZEND_INI_SYSTEM);
	const char *script = SG(request_info).path_translated;
	if (!script) {
		return FAILURE;
	}
	if (php_ini_has_per_host_config()) {
		char *host = env_get("SERVER_NAME");
		if (host) {
			size_t len = strlen(host);
			char *lower = estrndup(host, len);
			zend_str_tolower(lower, len);
			php_ini_activate_per_host_config(lower, len);
			efree(lower);
		}
	}
	bool user_ini = PG(user_ini_filename) && *PG(user_ini_filename);
	if (php_ini_has_per_dir_config() || user_ini) {
		size_t len = strlen(script);
		char *dir = emalloc(len + 2);
		memcpy(dir, script, len + 1);
		len = zend_dirname(dir, len);
		if (!IS_SLASH(script[strlen(script)])) {
			dir[len++] = DEFAULT_SLASH;
		}
		dir[len] = 0;
		php_ini_activate_per_dir_config(dir, len);
		if (user_ini) {
			char *doc_root = env_get("DOCUMENT_ROOT");
			if (doc_root) {
				size_t root_len = strlen(doc_root);
				if (root_len > 0 && IS_SLASH(doc_root[root_len - 1])) {
					root_len--;
				}
				activate_user_config(dir, len, doc_root, root_len);
			}
		}
		efree(dir);
	}
	return SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* Functions the module adds: php-cgi's and php-fpm's fastcgi_finish_request. */

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_tq_bool, 0, 0, _IS_BOOL, 0)
ZEND_END_ARG_INFO()
ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_tq_array, 0, 0, IS_ARRAY, 0)
ZEND_END_ARG_INFO()
ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_tq_handle_request, 0, 1, _IS_BOOL, 0)
	ZEND_ARG_TYPE_INFO(0, callback, IS_CALLABLE, 0)
ZEND_END_ARG_INFO()
ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_tq_dl, 0, 1, _IS_BOOL, 0)
	ZEND_ARG_TYPE_INFO(0, extension_filename, IS_STRING, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(fastcgi_finish_request)
{
	ZEND_PARSE_PARAMETERS_NONE();
	if (!io || finished) {
		RETURN_FALSE;
	}
	php_output_end_all();
	php_header();
	io->finish(io->ctx);
	finished = true;
	RETURN_TRUE;
}

/* FrankenPHP's headers_send(int $status = 200): int. With a 1xx status
 * (103 Early Hints) the headers set so far go out at once as an interim
 * head: a complete CGI head with its own Status line, on STDOUT before the
 * final head, which tqserver recognises and passes on to the client. The
 * headers stay set for the final response. Any other status sends the
 * final head now, as the first output would. Returns SUCCESS (0) or
 * FAILURE (-1). */
ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_tq_headers_send, 0, 0, IS_LONG, 0)
	ZEND_ARG_TYPE_INFO_WITH_DEFAULT_VALUE(0, status, IS_LONG, 0, "200")
ZEND_END_ARG_INFO()

static PHP_FUNCTION(headers_send)
{
	zend_long status = 200;
	ZEND_PARSE_PARAMETERS_START(0, 1)
		Z_PARAM_OPTIONAL
		Z_PARAM_LONG(status)
	ZEND_PARSE_PARAMETERS_END();
	if (!io || finished || SG(headers_sent) || SG(request_info).no_headers == 1) {
		RETURN_LONG(FAILURE);
	}
	if (status >= 100 && status < 200) {
		char line[32];
		int len = snprintf(line, sizeof(line), "Status: %d\r\n", (int)status);
		write_head(line, (size_t)len);
		zend_llist_position pos;
		for (sapi_header_struct *h = zend_llist_get_first_ex(&SG(sapi_headers).headers, &pos); h;
		     h = zend_llist_get_next_ex(&SG(sapi_headers).headers, &pos)) {
			if (!h->header_len || starts_with_ci(h->header, h->header_len, "Status:")) {
				continue;
			}
			write_head(h->header, h->header_len);
			write_head("\r\n", 2);
		}
		write_head("\r\n", 2);
		if (io->flush(io->ctx) != 0) {
			php_handle_aborted_connection();
		}
		RETURN_LONG(SUCCESS);
	}
	SG(sapi_headers).http_response_code = (int)status;
	RETURN_LONG(sapi_send_headers());
}

static PHP_FUNCTION(apache_child_terminate)
{
	ZEND_PARSE_PARAMETERS_NONE();
	RETURN_FALSE;
}

/* HTTP_FOO_BAR becomes Foo-Bar, as php-cgi names request headers. */
static void add_request_header(struct tq_var *var, zval *array)
{
	const char *name = var->name;
	size_t len = var->name_len;
	if (len > 5 && memcmp(name, "HTTP_", 5) == 0) {
		char *out = emalloc(len - 5 + 1);
		size_t n = 0;
		bool upper = true;
		for (size_t i = 5; i < len; i++) {
			char c = name[i];
			if (c == '_') {
				out[n++] = '-';
				upper = true;
			} else {
				out[n++] = upper ? c : (char)tolower((unsigned char)c);
				upper = false;
			}
		}
		add_assoc_stringl_ex(array, out, n, var->value, var->value_len);
		efree(out);
	} else if (len == 12 && memcmp(name, "CONTENT_TYPE", 12) == 0) {
		add_assoc_stringl_ex(array, "Content-Type", 12, var->value, var->value_len);
	} else if (len == 14 && memcmp(name, "CONTENT_LENGTH", 14) == 0) {
		add_assoc_stringl_ex(array, "Content-Length", 14, var->value, var->value_len);
	}
}

static PHP_FUNCTION(apache_request_headers)
{
	ZEND_PARSE_PARAMETERS_NONE();
	array_init(return_value);
	for (size_t i = env.len; i > 0; i--) {
		if (env.vars[i - 1].value) {
			add_request_header(&env.vars[i - 1], return_value);
		}
	}
}

static void add_response_header(sapi_header_struct *h, zval *array)
{
	char *colon = h->header_len ? memchr(h->header, ':', h->header_len) : NULL;
	if (!colon || colon == h->header) {
		return;
	}
	size_t name_len = (size_t)(colon - h->header);
	while (name_len && (h->header[name_len - 1] == ' ' || h->header[name_len - 1] == '\t')) {
		name_len--;
	}
	if (!name_len) {
		return;
	}
	char *value = colon + 1;
	while (*value == ' ' || *value == '\t') {
		value++;
	}
	char *name = estrndup(h->header, name_len);
	add_assoc_stringl_ex(array, name, name_len, value, h->header_len - (size_t)(value - h->header));
	efree(name);
}

static PHP_FUNCTION(apache_response_headers)
{
	ZEND_PARSE_PARAMETERS_NONE();
	array_init(return_value);
	zend_llist_apply_with_argument(&SG(sapi_headers).headers,
	                               (llist_apply_with_arg_func_t)add_response_header, return_value);
}

/* ------------------------------------------------------------------------ */
/* Worker mode: FrankenPHP's frankenphp_handle_request(), between whose
 * requests PHP's request state is reset by hand, after the model of
 * php_request_startup() and php_request_shutdown() (and of FrankenPHP's
 * frankenphp.c, which does the same on threads). */

/* Modules whose request state is per client request: the session (closed
 * and written at the end of each, so it never carries over) and filter
 * (filter_input() reads the current request). */
static const char *per_request_modules[] = {"session", "filter", NULL};

static void init_request_info(void);

static void per_request_modules_call(bool startup)
{
	for (const char **name = per_request_modules; *name; name++) {
		zend_module_entry *module = zend_hash_str_find_ptr(&module_registry, *name, strlen(*name));
		if (!module) {
			continue;
		}
		if (startup && module->request_startup_func) {
			module->request_startup_func(module->type, module->module_number);
		} else if (!startup && module->request_shutdown_func) {
			module->request_shutdown_func(module->type, module->module_number);
		}
	}
}

/* php://input and other temporary streams of the last request: PHP frees
 * them when the script ends, which for a worker is never. */
static void release_temporary_streams(void)
{
	int stream_type = php_file_le_stream();
	zend_resource *resource;
	ZEND_HASH_FOREACH_PTR(&EG(regular_list), resource) {
		if (resource->type != stream_type) {
			continue;
		}
		php_stream *stream = resource->ptr;
		if (stream && stream->ops == &php_stream_temp_ops && !stream->__exposed && GC_REFCOUNT(resource) == 1) {
			zend_list_delete(resource);
		}
	} ZEND_HASH_FOREACH_END();
}

/* $_SESSION holds a reference to the session's data, which the session
 * module's request shutdown releases but the global keeps: removed, so the
 * next request (another user's) cannot read it (FrankenPHP's advisories
 * GHSA-r3xh-3r3w-47gp and GHSA-v3ph-cgqh-r8p5). */
static void forget_session_global(void)
{
	zend_hash_str_del(&EG(symbol_table), "_SESSION", sizeof("_SESSION") - 1);
}

/* $_GET, $_POST, $_COOKIE, $_FILES, $_SERVER and $_REQUEST built anew from
 * the current request; $_ENV stays. Scripts compiled before this request
 * never trigger the just-in-time globals again, so $_SERVER and $_REQUEST
 * are built here too. */
static void reset_superglobals(void)
{
	zval *files = &PG(http_globals)[TRACK_VARS_FILES];
	zval_ptr_dtor_nogc(files);
	ZVAL_UNDEF(files);
	zend_string *env_name = ZSTR_KNOWN(ZEND_STR_AUTOGLOBAL_ENV);
	zend_string *request_name = ZSTR_KNOWN(ZEND_STR_AUTOGLOBAL_REQUEST);
	zend_auto_global *global;
	zend_auto_global *request = NULL;
	ZEND_HASH_MAP_FOREACH_PTR(CG(auto_globals), global) {
		if (global->name == env_name || !global->auto_global_callback
			|| zend_string_equals_literal(global->name, "GLOBALS")) {
			continue;
		}
		if (global->name == request_name) {
			request = global; /* built from the others, so last */
			continue;
		}
		global->armed = global->auto_global_callback(global->name);
	} ZEND_HASH_FOREACH_END();
	if (request) {
		request->armed = request->auto_global_callback(request->name);
	}
}

static void env_from(const struct tq_param *params, size_t count)
{
	env_clear();
	for (size_t i = 0; i < count; i++) {
		env_put(params[i].name, params[i].name_len, params[i].value, params[i].value_len);
	}
}

/* A request context inside the worker script, from the parameters in env. */
static int worker_context_start(void)
{
	int result = SUCCESS;
	finished = false;
	SG(server_context) = (void *)io;
	init_request_info();
	zend_try {
		release_temporary_streams();
		php_output_activate();
		PG(header_is_being_sent) = 0;
		PG(connection_status) = PHP_CONNECTION_NORMAL;
		sapi_activate();
		if (PG(expose_php)) {
			sapi_add_header(SAPI_PHP_VERSION_HEADER, sizeof(SAPI_PHP_VERSION_HEADER) - 1, 1);
		}
		if (PG(output_handler) && PG(output_handler)[0]) {
			zval handler;
			ZVAL_STRING(&handler, PG(output_handler));
			php_output_start_user(&handler, 0, PHP_OUTPUT_HANDLER_STDFLAGS);
			zval_ptr_dtor(&handler);
		} else if (PG(output_buffering)) {
			php_output_start_user(NULL, PG(output_buffering) > 1 ? PG(output_buffering) : 0,
				PHP_OUTPUT_HANDLER_STDFLAGS);
		} else if (PG(implicit_flush)) {
			php_output_set_implicit_flush(1);
		}
		forget_session_global();
		reset_superglobals();
		per_request_modules_call(true);
	} zend_catch {
		result = FAILURE;
	} zend_end_try();
	worker.context = true;
	return result;
}

/* Ends the active context: output flushed, headers sent, session written
 * and closed, uploaded files removed, the memory limit reset. */
static void worker_context_end(void)
{
	zend_try {
		php_output_end_all();
	} zend_end_try();
	zend_try {
		per_request_modules_call(false);
	} zend_end_try();
	zend_try {
		php_output_deactivate();
	} zend_end_try();
	forget_session_global();
	if (SG(request_info).path_translated) {
		efree(SG(request_info).path_translated);
		SG(request_info).path_translated = NULL;
	}
	zend_try {
		sapi_deactivate();
	} zend_end_try();
	zend_set_memory_limit(PG(memory_limit));
	worker.context = false;
}

static PHP_FUNCTION(frankenphp_handle_request)
{
	zend_fcall_info fci;
	zend_fcall_info_cache fcc;
	ZEND_PARSE_PARAMETERS_START(1, 1)
		Z_PARAM_FUNC(fci, fcc)
	ZEND_PARSE_PARAMETERS_END();
	if (!worker.active || !io || !io->next) {
		zend_throw_exception(spl_ce_RuntimeException,
			"frankenphp_handle_request() called while not in worker mode (set php.worker)", 0);
		RETURN_THROWS();
	}
	if (worker.in_request) {
		zend_throw_exception(spl_ce_RuntimeException,
			"frankenphp_handle_request() called while handling a request", 0);
		RETURN_THROWS();
	}
	/* The boot's context (or the one the script ran in after a false). */
	if (worker.context) {
		worker_context_end();
	}
	worker.booted = true;
	zend_unset_timeout();

	const struct tq_param *params = NULL;
	size_t count = 0;
	bool got = io->next(io->ctx, &params, &count) == 1;
	if (got) {
		env_from(params, count);
	} else {
		env_from(worker.boot, worker.boot_count);
	}
	if (worker_context_start() == FAILURE || !got) {
		/* The script goes on in a context of its own until it ends. */
		finished = true;
		RETURN_FALSE;
	}
	worker.in_request = true;
	zend_set_timeout(INI_INT("max_execution_time"), 0);

	zval retval;
	ZVAL_UNDEF(&retval);
	fci.retval = &retval;
	fci.params = NULL;
	fci.param_count = 0;
	zend_call_function(&fci, &fcc);
	zval_ptr_dtor(&retval);
	if (EG(exception)) {
		if (zend_is_unwind_exit(EG(exception)) || zend_is_graceful_exit(EG(exception))) {
			/* exit(): the response is complete; the worker ends with it. */
			zend_bailout();
		}
		/* An uncaught exception: a fatal error for this request (500, the
		 * log line), and then the worker is replaced, since the app's state
		 * may be half-changed. */
		zend_exception_error(EG(exception), E_ERROR);
		zend_bailout();
	}
	zend_unset_timeout();
	worker_context_end();
	worker.in_request = false;
	if (!finished) {
		io->finish(io->ctx);
		finished = true;
	}
	RETURN_TRUE;
}

static const zend_function_entry module_functions[] = {
	PHP_FE(fastcgi_finish_request, arginfo_tq_bool)
	PHP_FE(apache_child_terminate, arginfo_tq_bool)
	PHP_FE(headers_send, arginfo_tq_headers_send)
	PHP_FE(apache_request_headers, arginfo_tq_array)
	PHP_FALIAS(getallheaders, apache_request_headers, arginfo_tq_array)
	PHP_FE(apache_response_headers, arginfo_tq_array)
	PHP_FE(frankenphp_handle_request, arginfo_tq_handle_request)
	PHP_FALIAS(tqserver_handle_request, frankenphp_handle_request, arginfo_tq_handle_request)
	PHP_FALIAS(frankenphp_finish_request, fastcgi_finish_request, arginfo_tq_bool)
	PHP_FALIAS(frankenphp_request_headers, apache_request_headers, arginfo_tq_array)
	PHP_FALIAS(frankenphp_response_headers, apache_response_headers, arginfo_tq_array)
	PHP_FE_END
};

static const zend_function_entry sapi_functions[] = {
	ZEND_FE(dl, arginfo_tq_dl)
	PHP_FE_END
};

static PHP_MINIT_FUNCTION(tq_cgi)
{
	REGISTER_INI_ENTRIES();
	return SUCCESS;
}

static PHP_MSHUTDOWN_FUNCTION(tq_cgi)
{
	zend_hash_destroy(&cgi.user_config_cache);
	UNREGISTER_INI_ENTRIES();
	return SUCCESS;
}

static PHP_MINFO_FUNCTION(tq_cgi)
{
	DISPLAY_INI_ENTRIES();
}

static zend_module_entry tq_module = {
	STANDARD_MODULE_HEADER,
	"cgi-fcgi",
	module_functions,
	PHP_MINIT(tq_cgi),
	PHP_MSHUTDOWN(tq_cgi),
	NULL,
	NULL,
	PHP_MINFO(tq_cgi),
	PHP_VERSION,
	STANDARD_MODULE_PROPERTIES,
};

static int tq_module_startup(sapi_module_struct *module)
{
	return php_module_startup(module, &tq_module);
}

static sapi_module_struct tq_sapi = {
	"cgi-fcgi",
	"CGI/FastCGI",
	tq_module_startup,
	php_module_shutdown_wrapper,
	tq_activate,
	NULL, /* deactivate: the Rust side ends the request */
	tq_ub_write,
	tq_flush,
	NULL, /* get uid */
	tq_getenv,
	php_error,
	NULL, /* header handler */
	tq_send_headers,
	NULL, /* send one header */
	tq_read_post,
	tq_read_cookies,
	tq_register_variables,
	tq_log_message,
	NULL, /* request time */
	NULL, /* terminate process */
	STANDARD_SAPI_MODULE_PROPERTIES,
};

/* ------------------------------------------------------------------------ */
/* SCRIPT_FILENAME, PATH_INFO, SCRIPT_NAME and PATH_TRANSLATED as php-cgi
 * settles them with cgi.fix_pathinfo (the default): a SCRIPT_FILENAME that is
 * not a file is cut back at slashes until it is one, the cut-off part becomes
 * PATH_INFO, and each variable that changes keeps its old value as ORIG_*. */

/* A path with a ".." segment is refused, as php-cgi refuses it. */
static bool path_is_valid(const char *path)
{
	if (!path) {
		return false;
	}
	const char *p = path;
	if (p[0] == '.' && p[1] == '.' && (!p[2] || IS_SLASH(p[2]))) {
		return false;
	}
	for (; *p; p++) {
		if (IS_SLASH(p[0]) && p[1] == '.' && p[2] == '.' && (!p[3] || IS_SLASH(p[3]))) {
			return false;
		}
	}
	return true;
}

/* Sets `name` and keeps the previous value as ORIG_<name> (if there was one
 * and it differs). Returns the stored value. */
static char *replace_keeping_original(const char *name, const char *orig_name, const char *original,
                                      const char *value)
{
	if (original) {
		env_set(orig_name, original);
	}
	return env_set(name, value);
}

/* PATH_TRANSLATED = the first `base_len` bytes of `base`, then PATH_INFO;
 * the old value is kept as ORIG_PATH_TRANSLATED. */
static void translate_path(const char *base, size_t base_len, const char *path_info,
                           const char *orig_path_translated)
{
	size_t info_len = path_info ? strlen(path_info) : 0;
	char *translated = emalloc(base_len + info_len + 1);
	memcpy(translated, base, base_len);
	if (info_len) {
		memcpy(translated + base_len, path_info, info_len);
	}
	translated[base_len + info_len] = 0;
	replace_keeping_original("PATH_TRANSLATED", "ORIG_PATH_TRANSLATED", orig_path_translated, translated);
	efree(translated);
}

static void settle_paths(char **script_out)
{
	char *script_filename = env_get("SCRIPT_FILENAME");
	char *path_translated = env_get("PATH_TRANSLATED");
	char *path_info = env_get("PATH_INFO");
	char *script_name = env_get("SCRIPT_NAME");
	char *script = script_filename ? script_filename : path_translated;

	if (!cgi.fix_pathinfo) {
		SG(request_info).request_uri = path_info ? path_info : script_name;
		if (!cgi.discard_path && path_translated) {
			script = path_translated;
		}
		*script_out = script;
		return;
	}

	/* Copies: the env_set calls below free the stored strings. */
	char *orig_script_filename = script_filename ? estrdup(script_filename) : NULL;
	char *orig_path_translated = path_translated ? estrdup(path_translated) : NULL;
	char *orig_path_info = path_info ? estrdup(path_info) : NULL;
	char *orig_script_name = script_name ? estrdup(script_name) : NULL;
	char *redirect_url = env_get("REDIRECT_URL");
	char *document_root = env_get("DOCUMENT_ROOT");
	if (!document_root && PG(doc_root)) {
		document_root = env_set("DOCUMENT_ROOT", PG(doc_root));
	}
	const char *name_for_uri = orig_script_name;
	if (path_translated && redirect_url && script && strcmp(path_translated, script) != 0) {
		/* Apache's Action: SCRIPT_FILENAME names the interpreter. */
		script = path_translated;
		name_for_uri = redirect_url;
	}

	size_t script_len = script ? strlen(script) : 0;
	char *resolved = NULL;
	bool look_back = script_len > 0 &&
	                 (script[script_len - 1] == '/' || (resolved = tsrm_realpath(script, NULL)) == NULL);
	if (look_back) {
		char *candidate = estrndup(script, script_len);
		char *slash;
		bool found = false;
		while ((slash = strrchr(candidate, '/')) != NULL) {
			*slash = 0;
			zend_stat_t st = {0};
			if (zend_stat(candidate, &st) != 0 || !S_ISREG(st.st_mode)) {
				continue;
			}
			found = true;
			/* The script is `candidate`; what was cut off is the tail of
			 * PATH_INFO. */
			size_t cut = script_len - strlen(candidate);
			size_t info_len = orig_path_info ? strlen(orig_path_info) : 0;
			char *new_info = orig_path_info && cut <= info_len ? orig_path_info + info_len - cut : NULL;
			char *current_info = orig_path_info;
			if (new_info != current_info) {
				if (orig_path_info) {
					env_set("ORIG_PATH_INFO", orig_path_info);
					/* SCRIPT_NAME becomes the part of PATH_INFO before the
					 * new PATH_INFO. */
					char *name = estrndup(orig_path_info, (size_t)(new_info - orig_path_info));
					if (!orig_script_name || strcmp(orig_script_name, name) != 0) {
						if (orig_script_name) {
							env_set("ORIG_SCRIPT_NAME", orig_script_name);
						}
						SG(request_info).request_uri = env_set("SCRIPT_NAME", name);
					} else {
						SG(request_info).request_uri = env_get("SCRIPT_NAME");
					}
					efree(name);
				}
				path_info = env_set("PATH_INFO", new_info);
			}
			if (!orig_script_filename || strcmp(orig_script_filename, candidate) != 0) {
				script = replace_keeping_original("SCRIPT_FILENAME", "ORIG_SCRIPT_FILENAME",
				                                  orig_script_filename, candidate);
			} else {
				script = env_get("SCRIPT_FILENAME");
			}
			if (document_root) {
				/* PATH_TRANSLATED = DOCUMENT_ROOT + PATH_INFO */
				size_t root_len = strlen(document_root);
				if (root_len && document_root[root_len - 1] == '/') {
					root_len--;
				}
				translate_path(document_root, root_len, path_info, orig_path_translated);
			} else if (name_for_uri && strstr(candidate, name_for_uri)) {
				/* PATH_TRANSLATED = script - SCRIPT_NAME + PATH_INFO */
				translate_path(candidate, strlen(candidate) - strlen(name_for_uri), path_info,
				               orig_path_translated);
			}
			break;
		}
		if (!found) {
			/* Nothing along the path is a file: "No input file specified." */
			if (orig_script_filename) {
				env_set("ORIG_SCRIPT_FILENAME", orig_script_filename);
			}
			script = env_set("SCRIPT_FILENAME", NULL);
			SG(sapi_headers).http_response_code = 404;
		}
		if (!SG(request_info).request_uri) {
			if (!orig_script_name || (name_for_uri && strcmp(orig_script_name, name_for_uri) != 0)) {
				if (orig_script_name) {
					env_set("ORIG_SCRIPT_NAME", orig_script_name);
				}
				SG(request_info).request_uri = name_for_uri ? env_set("SCRIPT_NAME", name_for_uri)
				                                            : env_set("SCRIPT_NAME", NULL);
			} else {
				SG(request_info).request_uri = env_get("SCRIPT_NAME");
			}
		}
		efree(candidate);
	} else {
		/* The script exists as named: PATH_INFO stays as given. */
		if (!orig_script_filename || strcmp(script, orig_script_filename) != 0) {
			script = replace_keeping_original("SCRIPT_FILENAME", "ORIG_SCRIPT_FILENAME", orig_script_filename,
			                                  script);
		} else {
			script = env_get("SCRIPT_FILENAME");
		}
		if (redirect_url) {
			if (orig_path_info) {
				env_set("ORIG_PATH_INFO", orig_path_info);
				env_set("PATH_INFO", NULL);
			}
			if (orig_path_translated) {
				env_set("ORIG_PATH_TRANSLATED", orig_path_translated);
				env_set("PATH_TRANSLATED", NULL);
			}
		}
		if (name_for_uri != orig_script_name) {
			if (orig_script_name) {
				env_set("ORIG_SCRIPT_NAME", orig_script_name);
			}
			SG(request_info).request_uri = env_set("SCRIPT_NAME", name_for_uri);
		} else {
			SG(request_info).request_uri = env_get("SCRIPT_NAME");
		}
		if (resolved) {
			efree(resolved);
		}
	}
	*script_out = script;
	if (orig_script_filename) efree(orig_script_filename);
	if (orig_path_translated) efree(orig_path_translated);
	if (orig_path_info) efree(orig_path_info);
	if (orig_script_name) efree(orig_script_name);
}

static void init_request_info(void)
{
	SG(request_info).path_translated = NULL;
	SG(request_info).request_method = NULL;
	SG(request_info).proto_num = 1000;
	SG(request_info).query_string = NULL;
	SG(request_info).request_uri = NULL;
	SG(request_info).content_type = NULL;
	SG(request_info).content_length = 0;
	SG(sapi_headers).http_response_code = 200;

	if (!env_get("SCRIPT_FILENAME") && !env_get("PATH_TRANSLATED")) {
		return;
	}
	char *script = NULL;
	if (worker.booted) {
		/* A worker's client request: its parameters as the web server sent
		 * them (the script that runs is the worker's, whatever they name). */
		script = env_get("SCRIPT_FILENAME");
	} else {
		settle_paths(&script);
	}
	if (path_is_valid(script)) {
		SG(request_info).path_translated = estrdup(script);
	}
	char *content_length = env_get("CONTENT_LENGTH");
	char *content_type = env_get("CONTENT_TYPE");
	SG(request_info).request_method = env_get("REQUEST_METHOD");
	SG(request_info).query_string = env_get("QUERY_STRING");
	SG(request_info).content_type = content_type ? content_type : "";
	SG(request_info).content_length = content_length ? atol(content_length) : 0;
	php_handle_auth_data(env_get("HTTP_AUTHORIZATION"));
}

/* ------------------------------------------------------------------------ */
/* The entry points. */

/* After a script ran (or failed to open): its file closed, PHP's request
 * shut down (output flushed, headers sent); the script's exit status. */
static int end_script(zend_file_handle *file, bool opened)
{
	if (opened) {
		zend_destroy_file_handle(file);
	}
	if (SG(request_info).path_translated) {
		efree(SG(request_info).path_translated);
		SG(request_info).path_translated = NULL;
	}
	php_request_shutdown(NULL);
	return EG(exit_status);
}

int tq_php_startup(const char *ini_entries, const char *ini_path)
{
	memset(&cgi, 0, sizeof(cgi));
	cgi.check_shebang_line = true;
	cgi.force_redirect = true;
	cgi.fix_pathinfo = true;
	cgi.fcgi_logging = true;
	zend_hash_init(&cgi.user_config_cache, 8, NULL, user_config_dtor, 1);

	zend_signal_startup();
	sapi_startup(&tq_sapi);
	tq_sapi.additional_functions = sapi_functions;
	if (ini_entries && *ini_entries) {
		tq_sapi.ini_entries = strdup(ini_entries);
	}
	tq_sapi.php_ini_path_override = ini_path ? strdup(ini_path) : NULL;
	original_import = php_import_environment_variables;
	php_import_environment_variables = tq_import_environment;
	if (tq_sapi.startup(&tq_sapi) == FAILURE) {
		return -1;
	}
	return 0;
}

void tq_php_after_fork(void)
{
	/* Seeded lazily on first use; a worker must seed its own. */
	RANDOM_G(mt19937_seeded) = false;
	RANDOM_G(combined_lcg_seeded) = false;
}

int tq_php_request(const struct tq_param *params, size_t count, const struct tq_io *request_io)
{
	env_clear();
	for (size_t i = 0; i < count; i++) {
		env_put(params[i].name, params[i].name_len, params[i].value, params[i].value_len);
	}
	io = request_io;
	finished = false;
	/* Non-NULL, or PHP never reads the body and cookies. */
	SG(server_context) = (void *)request_io;

	init_request_info();
	if (php_request_startup() == FAILURE) {
		io = NULL;
		SG(server_context) = NULL;
		return -1;
	}
	zend_file_handle file;
	bool opened = false;
	zend_try {
		if (php_fopen_primary_script(&file) == FAILURE) {
			if (errno == EACCES) {
				SG(sapi_headers).http_response_code = 403;
				PUTS("Access denied.\n");
			} else {
				SG(sapi_headers).http_response_code = 404;
				PUTS("No input file specified.\n");
			}
		} else {
			opened = true;
			if (cgi.check_shebang_line) {
				CG(skip_shebang) = 1;
			}
			php_execute_script(&file);
		}
	} zend_end_try();
	int status = end_script(&file, opened);
	io = NULL;
	SG(server_context) = NULL;
	env_clear();
	return status;
}

int tq_php_worker(const struct tq_param *params, size_t count, const struct tq_io *request_io)
{
	env_from(params, count);
	io = request_io;
	finished = false;
	SG(server_context) = (void *)request_io;
	worker.active = true;
	worker.booted = false;
	worker.in_request = false;
	worker.boot = params;
	worker.boot_count = count;

	init_request_info();
	if (php_request_startup() == FAILURE) {
		worker.active = false;
		io = NULL;
		SG(server_context) = NULL;
		return -1;
	}
	worker.context = true;
	zend_file_handle file;
	bool opened = false;
	zend_try {
		if (php_fopen_primary_script(&file) == FAILURE) {
			char *script = env_get("SCRIPT_FILENAME");
			char *line;
			spprintf(&line, 0, "worker script %s: %s", script ? script : "(none)", strerror(errno));
			tq_log_message(line, 0);
			efree(line);
			EG(exit_status) = 1;
		} else {
			opened = true;
			if (cgi.check_shebang_line) {
				CG(skip_shebang) = 1;
			}
			php_execute_script(&file);
		}
	} zend_end_try();
	if (!worker.context) {
		/* The script ended between two requests: a context to end it in. */
		env_from(worker.boot, worker.boot_count);
		worker_context_start();
		finished = true;
	}
	/* A request cut short by a fatal error or exit() is still open: its
	 * output and headers go out here, as php-cgi sends them. */
	int status = end_script(&file, opened);
	worker.active = false;
	worker.context = false;
	worker.in_request = false;
	io = NULL;
	SG(server_context) = NULL;
	env_clear();
	return status;
}

const char *tq_php_version(void)
{
	return PHP_VERSION;
}
