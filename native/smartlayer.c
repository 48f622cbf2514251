/*
 * smartlayer's native compressor: whole-block gzip with libdeflate, run on the libuv thread pool
 * so blocks of one layer compress on every core without a child process per block (a fork, two
 * pipe copies and a header rewrite each). Plain Node-API (no C++ wrapper, no node-gyp): built at
 * install time by native/build.mjs with the system compiler when libdeflate's headers are there,
 * and simply absent otherwise — the JavaScript side then falls back to the libdeflate-gzip
 * program or to Node's zlib.
 *
 * Exports:
 *   gzipMember(input: Buffer, level: number): Promise<Buffer>
 *     One complete gzip member of `input` (libdeflate_gzip_compress: the same bytes as the
 *     libdeflate-gzip program of the same libdeflate version, header aside). The input must not be
 *     modified until the promise settles (a reference keeps it alive).
 *   libdeflateVersion: string
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <libdeflate.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One compressor per pool thread, reallocated only when the level changes: allocating one costs
 * more than compressing a small block. The pool threads live as long as the process. */
static __thread struct libdeflate_compressor *thread_compressor = NULL;
static __thread int thread_level = -1;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref;
  const uint8_t *input;
  size_t input_length;
  int level;
  uint8_t *output;
  size_t output_length;
  const char *error;
} GzipJob;

#define CHECK(env, call)                                          \
  do {                                                            \
    if ((call) != napi_ok) {                                      \
      napi_throw_error((env), NULL, "smartlayer native: " #call); \
      return NULL;                                                \
    }                                                             \
  } while (0)

static void gzip_execute(napi_env env, void *data) {
  (void)env;
  GzipJob *job = data;
  if (thread_compressor == NULL || thread_level != job->level) {
    if (thread_compressor) libdeflate_free_compressor(thread_compressor);
    thread_compressor = libdeflate_alloc_compressor(job->level);
    thread_level = thread_compressor ? job->level : -1;
    if (thread_compressor == NULL) {
      job->error = "libdeflate could not allocate a compressor";
      return;
    }
  }
  size_t bound = libdeflate_gzip_compress_bound(thread_compressor, job->input_length);
  job->output = malloc(bound);
  if (job->output == NULL) {
    job->error = "out of memory";
    return;
  }
  job->output_length = libdeflate_gzip_compress(thread_compressor, job->input, job->input_length, job->output, bound);
  if (job->output_length == 0) {
    free(job->output);
    job->output = NULL;
    job->error = "libdeflate_gzip_compress failed";
    return;
  }
  /* Give back the slack of the bound (it is about the input's size) before the buffer waits in
   * the window for its turn. */
  uint8_t *shrunk = realloc(job->output, job->output_length);
  if (shrunk) job->output = shrunk;
}

static void free_output(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static void gzip_complete(napi_env env, napi_status status, void *data) {
  GzipJob *job = data;
  napi_value result = NULL;
  napi_value error = NULL;
  if (status == napi_ok && job->error == NULL) {
    if (napi_create_external_buffer(env, job->output_length, job->output, free_output, NULL, &result) == napi_ok) {
      int64_t adjusted;
      napi_adjust_external_memory(env, (int64_t)job->output_length, &adjusted);
      job->output = NULL; /* owned by the Buffer now */
    } else {
      result = NULL;
    }
  }
  if (result == NULL) {
    napi_value message;
    const char *text = job->error ? job->error : (status == napi_cancelled ? "cancelled" : "could not return the compressed block");
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_reject_deferred(env, job->deferred, error);
  } else {
    napi_resolve_deferred(env, job->deferred, result);
  }
  free(job->output);
  napi_delete_reference(env, job->input_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value gzip_member(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool is_buffer = false;
  if (argc < 2 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, NULL, "gzipMember(input: Buffer, level: number)");
    return NULL;
  }
  int32_t level;
  if (napi_get_value_int32(env, argv[1], &level) != napi_ok || level < 0 || level > 12) {
    napi_throw_range_error(env, NULL, "libdeflate level must be 0-12");
    return NULL;
  }
  GzipJob *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  void *input;
  CHECK(env, napi_get_buffer_info(env, argv[0], &input, &job->input_length));
  job->input = input;
  job->level = level;
  CHECK(env, napi_create_reference(env, argv[0], 1, &job->input_ref));
  napi_value promise, name;
  CHECK(env, napi_create_promise(env, &job->deferred, &promise));
  CHECK(env, napi_create_string_utf8(env, "smartlayer.gzipMember", NAPI_AUTO_LENGTH, &name));
  CHECK(env, napi_create_async_work(env, NULL, name, gzip_execute, gzip_complete, job, &job->work));
  CHECK(env, napi_queue_async_work(env, job->work));
  return promise;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn, version;
  CHECK(env, napi_create_function(env, "gzipMember", NAPI_AUTO_LENGTH, gzip_member, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "gzipMember", fn));
  CHECK(env, napi_create_string_utf8(env, LIBDEFLATE_VERSION_STRING, NAPI_AUTO_LENGTH, &version));
  CHECK(env, napi_set_named_property(env, exports, "libdeflateVersion", version));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
