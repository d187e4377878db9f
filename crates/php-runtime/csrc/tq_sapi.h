/* The C side of tqserver-php: a PHP SAPI named "cgi-fcgi" over callbacks.
 *
 * Everything that can reach zend_bailout() (a fatal error, exit(), a timeout,
 * an aborted connection) runs inside the functions of this file, between a
 * zend_try and its zend_end_try. Rust calls in (tq_php_*) and PHP calls out
 * through struct tq_io; the callbacks are leaves that never call back into
 * PHP, so a longjmp never crosses a Rust frame. */
#ifndef TQ_SAPI_H
#define TQ_SAPI_H

#include <stddef.h>

/* One FastCGI parameter, as it arrived. */
struct tq_param {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};

/* What PHP may do with the connection during a request. `ctx` is passed back
 * unchanged. */
struct tq_io {
	void *ctx;
	/* Response bytes (the CGI head, then the body). Returns how many were
	 * taken: fewer than `len` means the web server is gone. */
	size_t (*write)(void *ctx, const char *buf, size_t len);
	/* Sends what is buffered. 0, or -1 when the web server is gone. */
	int (*flush)(void *ctx);
	/* Request body bytes; 0 at its end. */
	size_t (*read)(void *ctx, char *buf, size_t len);
	/* One log line (no newline) for the web server's error log. */
	void (*log)(void *ctx, const char *line, size_t len);
	/* fastcgi_finish_request(): ends the response for the client. 0 if it
	 * was ended now, -1 if it had been already. */
	int (*finish)(void *ctx);
	/* Worker mode only (NULL otherwise): ends the request that ran, if its
	 * response is not ended yet, and waits for the next one. 1 with its
	 * parameters in *params and *count (valid until the next call), or 0
	 * when the worker must stop (the pool retires it, tqserver stops). */
	int (*next)(void *ctx, const struct tq_param **params, size_t *count);
};

/* Runs PHP's module startup once: `ini_entries` is "key=value\n" lines
 * (as php-cgi's -d), `ini_path` a php.ini to use instead of the default
 * (as -c; NULL for the default). 0 on success. */
int tq_php_startup(const char *ini_entries, const char *ini_path);

/* In a freshly forked worker: forget what must not be shared with siblings
 * (the seeded state of PHP's random number generators). */
void tq_php_after_fork(void);

/* Runs one request as php-cgi would, writing the response through `io`.
 * Returns the script's exit status. */
int tq_php_request(const struct tq_param *params, size_t count, const struct tq_io *io);

/* Worker mode: runs the worker script that `params` name (SCRIPT_FILENAME)
 * once, as a request with no client; each call the script makes to
 * frankenphp_handle_request() asks io->next for a request and runs the
 * script's callback for it with fresh superglobals, output, headers and
 * session. Returns when the script ends: the exit status, or -1 if PHP
 * could not start. A request that a fatal error or exit() ended is still
 * open then, its response written; the caller ends it. */
int tq_php_worker(const struct tq_param *params, size_t count, const struct tq_io *io);

/* PHP's version, "8.2.32". */
const char *tq_php_version(void);

#endif
