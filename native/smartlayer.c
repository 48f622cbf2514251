/*
 * smartlayer's native compressor: whole-block gzip with libdeflate, run on the libuv thread pool
 * so blocks of one layer compress on every core without a child process per block (a fork, two
 * pipe copies and a header rewrite each). Plain Node-API (no C++ wrapper, no node-gyp): built at
 * install time by native/build.mjs with the system compiler when libdeflate's headers are there,
 * and simply absent otherwise — the JavaScript side then falls back to the libdeflate-gzip
 * program or to Node's zlib.
 *
 * Each library is optional at build time (SMART_HAVE_LIBDEFLATE, SMART_HAVE_ZSTD); what is built
 * is exported:
 *   gzipMember(input: Buffer, level: number): Promise<Buffer>
 *     One complete gzip member of `input` (libdeflate_gzip_compress: the same bytes as the
 *     libdeflate-gzip program of the same libdeflate version, header aside). The input must not be
 *     modified until the promise settles (a reference keeps it alive).
 *   libdeflateVersion: string
 *   zstdCreate(level: number, workers: number, jobSize: number): ZstdContext
 *   zstdCompress(context, input: Buffer, end: boolean): Promise<Buffer>
 *     Streaming zstd on libzstd's own worker threads (ZSTD_c_nbWorkers), jobs of `jobSize`
 *     bytes, with a content checksum as the zstd program writes by default: the same frame as
 *     `zstd -LEVEL -T0 -BjobSize` on the same input, whatever the number of workers. Calls on one context must not overlap (the JavaScript side awaits each); the context
 *     is freed when garbage-collected or by zstdFree (never while a call is running).
 *   zstdFree(context): void
 *   zstdVersion: string
 *   igzipMember(input: Buffer, level: number): Promise<Buffer>
 *     One complete gzip member of `input` with ISA-L's igzip (isal_deflate_stateless, levels
 *     0-3, a level buffer of ISA-L's default size for the level): about three times libdeflate
 *     level 1's speed on x86 for a few percent more bytes. One call on the whole block, so its
 *     bytes do not depend on how the input arrived (the igzip program's, read in pieces, can).
 *   isalVersion: string
 *   sha256Create(): Sha256Context
 *   sha256Update(context, chunks: Buffer[]): Promise<void>
 *     Hashes the chunks, in order, on the pool: for checking a digest without the main thread's
 *     time (a layer's 200 MB cost it 0.12 s). The chunks must not be modified until the promise
 *     settles (a reference keeps them alive); calls on one context must not overlap.
 *   sha256Digest(context): string   the hex digest of all that was hashed; the context is done.
 *   sha256File(path: string, limit: number): Promise<[hex: string, bytes: number]>
 *     Reads and hashes a file on the pool, stopping once past `limit` bytes (too long already).
 *     All four exist only where the process has OpenSSL's EVP functions (Node's own, looked up
 *     when the addon loads: the code of crypto.createHash, SHA extensions included), never linked.
 *   gunzipCreate(fd: number, limit: number, hash = true): GunzipContext   (ISA-L, and OpenSSL as above)
 *   gunzipRun(context, chunks: Buffer[], end: boolean, outputBytes: number):
 *       Promise<[output: Buffer, status, inputBytes, errno, inputHex?]>
 *     gzip decompressed with ISA-L's inflate on the pool, one output Buffer of up to
 *     `outputBytes` a call. Several members are one stream; bytes after a member that are not
 *     another are ignored (as the igzip program does). With fd -1 the input comes with the calls
 *     (`end` once there is no more; the chunks are copied in on the pool, so they must not change
 *     until the call settles); with an fd the job reads the file itself from offset 0 and hashes
 *     it (sha256; not when `hash` is false: a file checked just before), stopping once past
 *     `limit` bytes. status: 0 needs input, 1 more output to
 *     come, 2 done (with a file, its digest is there), negative a failure: ISA-L's error codes,
 *     -100 truncated, -101 not gzip, -102 a read error (errno), -103 past the limit. After a
 *     failure in a file the rest is read and its digest given too. Calls must not overlap.
 *   heapRetain(topPad: number): boolean   (glibc)
 *     mallopt(M_TOP_PAD, topPad), with M_MMAP_THRESHOLD at 32 MiB (see heap_retain); false when
 *     glibc refused.
 *   makePipe(bytes: number): [readFd: number, writeFd: number]   (Linux)
 *     A pipe (both ends close-on-exec) of `bytes` capacity where the kernel allows it (1 MiB is
 *     the most an unprivileged process may ask for by default; a refusal leaves 64 KiB). For a
 *     decompressor program's stdout: Node gives a child a socket pair, through which `igzip -d`
 *     stalls whenever the event loop does not read at once; 150 MB of output through a socket
 *     pair took 0.33 s, through a 1 MiB pipe 0.25 s (igzip alone, to /dev/null: 0.25 s).
 *
 *   writeFiles(records: Buffer, contents: Buffer[]): Promise<[done, errno, step]>   (Linux)
 *     Creates small files on the pool, in order, as a layer's entries are laid down: for each
 *     record, open(O_CREAT|O_EXCL|O_NOFOLLOW) with its mode (a file or a link
 *     in the way unlinked first, not a directory), the whole content
 *     written, then fchown, fchmod (each if asked), futimens and close. A record: u32 path length,
 *     u32 open mode, i32 chmod mode (-1: none), u32 uid and u32 gid (0xffffffff: no chown), u32
 *     source path length (0: none), f64 atime and f64 mtime in seconds (converted as libuv
 *     converts them, so the times are Node's futimes's to the microsecond), u32 the source's
 *     size, u32 unused, then the path's bytes and the source path's. A record with a source path
 *     (a file of the layer store) has its content read from that file, which must be of that
 *     size (ENODATA shorter, EFBIG longer); `contents` holds the others' contents, in order.
 *     Stops at the first failure: `done` records were made (the index of the failed one), `errno`
 *     and `step` (0 open, 1 write, 2 fchown, 3 fchmod, 4 futimens, 5 close, 6 reading the
 *     source) say how; errno 0 when all were. The buffers must not change until it settles (a
 *     reference keeps them).
 *   extractFiles(chunk: Buffer, start: number, dir: Buffer, prefix: Buffer, params: Int32Array,
 *                out: Int32Array): void   (Linux)
 *     Lays down, synchronously, the run of small regular files from `start` in `chunk` (a tar's
 *     bytes, at a header) whose names are `prefix` + a plain base name, into `dir` + that name,
 *     each as writeFiles makes one (see extract_files for what a run takes). params: umask (-1
 *     unknown), chown (0/1), creator uid, creator gid, whether `dir` is set-group-ID, the largest
 *     content. out: bytes consumed (whole entries), files made, their bytes, the offset of the
 *     last one's first header (-1: none). It stops before any entry it does not take or cannot
 *     make; the caller reads that one itself.
 *   copyStoredFiles(text: Buffer, start: number, files: Buffer, dir: Buffer, prefix: Buffer,
 *                   params: Int32Array, out: Int32Array): void   (Linux)
 *     extractFiles's run for a layer laid from the layer store: from `start` in `text` (whole
 *     lines of the layer's index), the lines of small regular files named `prefix` (as JSON text)
 *     + a plain base name, each made at `dir` + that name from the store's file `files` + its
 *     number (see copy_stored_files for what a run takes). params as extractFiles's; out: bytes
 *     of whole lines consumed, files made, their bytes. It stops before any line it does not
 *     take, or whose file it cannot read whole or make; the caller takes that line itself.
 *   exchangePaths(a: Buffer, b: Buffer): number   (Linux)
 *     renameat2(2) with RENAME_EXCHANGE: `a` and `b` swap names in one step, so that a pull
 *     replacing a tree is never killed between moving the old one aside and putting the new one
 *     in place (no directory at all). Node has no call for it. 0, or the errno (EINVAL where the
 *     filesystem cannot, ENOSYS before Linux 3.15): the caller then renames twice.
 *   setXattr(path: Buffer, name: Buffer, value: Buffer): number   (Linux)
 *     lsetxattr(2): the extended attribute `name` of `path` itself (a symlink's own, not its
 *     target's), for a layer entry's `SCHILY.xattr.*` records (a file capability such as ping's
 *     cap_net_raw is one). Node has no call for it. 0, or the errno: the caller says which
 *     refusals (no xattrs on this filesystem, not permitted to this user) are warnings.
 */
#ifdef __linux__
#define _GNU_SOURCE /* F_SETPIPE_SZ, RTLD_DEFAULT */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#endif
#define NAPI_VERSION 8
#include <node_api.h>
#include <stdbool.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef SMART_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif
#ifdef SMART_HAVE_ZSTD
#include <zstd.h>
#endif
#ifdef SMART_HAVE_ISAL
#include <isa-l.h>
#endif

#define CHECK(env, call)                                          \
  do {                                                            \
    if ((call) != napi_ok) {                                      \
      napi_throw_error((env), NULL, "smartlayer native: " #call); \
      return NULL;                                                \
    }                                                             \
  } while (0)

/* Settles a job's promise: resolves with `result`, or, when it is NULL, rejects with an Error
 * saying `error` (or why the work did not run). */
static void settle(napi_env env, napi_deferred deferred, napi_status status, napi_value result, const char *error, const char *fallback) {
  if (result != NULL) {
    napi_resolve_deferred(env, deferred, result);
    return;
  }
  napi_value message, reason;
  const char *text = error ? error : (status == napi_cancelled ? "cancelled" : fallback);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, NULL, message, &reason);
  napi_reject_deferred(env, deferred, reason);
}

/* Queues `execute` on the libuv pool and `complete` after it on the main thread; returns the
 * promise `complete` settles through *deferred, or NULL with an exception pending. */
static napi_value queue_work(napi_env env, const char *name, napi_async_execute_callback execute, napi_async_complete_callback complete, void *data,
                             napi_async_work *work, napi_deferred *deferred) {
  napi_value promise, resource_name;
  CHECK(env, napi_create_promise(env, deferred, &promise));
  CHECK(env, napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name));
  CHECK(env, napi_create_async_work(env, NULL, resource_name, execute, complete, data, work));
  if (napi_queue_async_work(env, *work) != napi_ok) {
    napi_delete_async_work(env, *work);
    napi_throw_error(env, NULL, "could not queue the work");
    return NULL;
  }
  return promise;
}

/* The pointer an external made by this addon holds, or NULL with a TypeError saying `error` pending. */
static void *external_arg(napi_env env, napi_value value, const char *error) {
  void *data = NULL;
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_external || napi_get_value_external(env, value, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, NULL, error);
    return NULL;
  }
  return data;
}


#if defined(SMART_HAVE_LIBDEFLATE) || defined(SMART_HAVE_ISAL)
/* Frees a compressed block handed to JavaScript, and takes it back off the external memory V8
 * was told of when it was handed over (the hint carries the amount). */
static void free_output(napi_env env, void *data, void *hint) {
  int64_t adjusted;
  napi_adjust_external_memory(env, -(int64_t)(uintptr_t)hint, &adjusted);
  free(data);
}

/* A compressed block's job: the input (kept alive by a reference), the output made on the pool. */
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

static void gzip_complete(napi_env env, napi_status status, void *data) {
  GzipJob *job = data;
  napi_value result = NULL;
  if (status == napi_ok && job->error == NULL &&
      napi_create_external_buffer(env, job->output_length, job->output, free_output, (void *)(uintptr_t)job->input_length, &result) == napi_ok) {
    /* Counted, so the garbage collector runs as compressed blocks pile up, not only as the
     * JavaScript heap grows; counted at the size of the block it was compressed from, not its
     * own: V8 collects on external memory some 64 MB at a time, and at their own size two dozen
     * blocks (40 MB) waited dead for it; so counted, about fifteen (a 1 GB push: 121 -> 107 MB of
     * peak RSS, no slower). */
    int64_t adjusted;
    napi_adjust_external_memory(env, (int64_t)job->input_length, &adjusted);
    job->output = NULL; /* owned by the Buffer now */
  } else {
    result = NULL;
  }
  settle(env, job->deferred, status, result, job->error, "could not return the compressed block");
  free(job->output);
  napi_delete_reference(env, job->input_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

/* Queues `execute` on a block (argv: input Buffer, level in [0, max_level]); `usage` and `range` are the errors of bad arguments. */
static napi_value queue_block(napi_env env, napi_callback_info info, const char *name, napi_async_execute_callback execute, int max_level, const char *usage,
                              const char *range) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool is_buffer = false;
  if (argc < 2 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  int32_t level;
  if (napi_get_value_int32(env, argv[1], &level) != napi_ok || level < 0 || level > max_level) {
    napi_throw_range_error(env, NULL, range);
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
  napi_value promise = queue_work(env, name, execute, gzip_complete, job, &job->work, &job->deferred);
  if (promise == NULL) {
    napi_delete_reference(env, job->input_ref);
    free(job);
  }
  return promise;
}
#endif

#ifdef SMART_HAVE_LIBDEFLATE
/* One compressor per pool thread, reallocated only when the level changes: allocating one costs
 * more than compressing a small block. The pool threads live as long as the process. */
static __thread struct libdeflate_compressor *thread_compressor = NULL;
static __thread int thread_level = -1;

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


static napi_value gzip_member(napi_env env, napi_callback_info info) {
  return queue_block(env, info, "smartlayer.gzipMember", gzip_execute, 12, "gzipMember(input: Buffer, level: number)", "libdeflate level must be 0-12");
}

#endif /* SMART_HAVE_LIBDEFLATE */

#ifdef SMART_HAVE_ISAL
/* ISA-L's level buffer of each pool thread, of the default size of the level last used there:
 * the size is part of what makes the bytes, so it is always the default of the level. */
static __thread uint8_t *thread_isal_buffer = NULL;
static __thread int thread_isal_level = -1;

static uint32_t isal_buffer_size(int level) {
  switch (level) {
    case 1: return ISAL_DEF_LVL1_DEFAULT;
    case 2: return ISAL_DEF_LVL2_DEFAULT;
    case 3: return ISAL_DEF_LVL3_DEFAULT;
    default: return 0;
  }
}

static void igzip_execute(napi_env env, void *data) {
  (void)env;
  GzipJob *job = data;
  uint32_t buffer_size = isal_buffer_size(job->level);
  if (thread_isal_level != job->level) {
    free(thread_isal_buffer);
    thread_isal_buffer = buffer_size ? malloc(buffer_size) : NULL;
    thread_isal_level = (buffer_size == 0 || thread_isal_buffer) ? job->level : -1;
    if (thread_isal_level < 0) {
      job->error = "out of memory";
      return;
    }
  }
  if (job->input_length > UINT32_MAX / 2) {
    job->error = "block too large for igzip";
    return;
  }
  /* Stored blocks at worst: the input, 5 bytes a 64 KiB block, the gzip header and trailer. */
  size_t bound = job->input_length + 5 * (job->input_length / 65535 + 1) + 1024;
  job->output = malloc(bound);
  if (job->output == NULL) {
    job->error = "out of memory";
    return;
  }
  struct isal_zstream stream;
  isal_deflate_stateless_init(&stream);
  stream.level = job->level;
  stream.level_buf = thread_isal_buffer;
  stream.level_buf_size = buffer_size;
  stream.gzip_flag = IGZIP_GZIP;
  stream.end_of_stream = 1;
  stream.flush = NO_FLUSH;
  stream.next_in = (uint8_t *)job->input;
  stream.avail_in = (uint32_t)job->input_length;
  stream.next_out = job->output;
  stream.avail_out = (uint32_t)bound;
  int rc = isal_deflate_stateless(&stream);
  if (rc != COMP_OK) {
    free(job->output);
    job->output = NULL;
    job->error = rc == STATELESS_OVERFLOW ? "isal_deflate_stateless: output larger than its bound" : "isal_deflate_stateless failed";
    return;
  }
  job->output_length = stream.total_out;
  uint8_t *shrunk = realloc(job->output, job->output_length);
  if (shrunk) job->output = shrunk;
}

static napi_value igzip_member(napi_env env, napi_callback_info info) {
  return queue_block(env, info, "smartlayer.igzipMember", igzip_execute, ISAL_DEF_MAX_LEVEL, "igzipMember(input: Buffer, level: number)", "igzip level must be 0-3");
}
#endif /* SMART_HAVE_ISAL */

#ifdef SMART_HAVE_ZSTD
typedef struct {
  ZSTD_CCtx *cctx;
  bool busy;
  /* Where each call's output is gathered before it is copied into a JavaScript Buffer: kept and
   * reused, so a long layer does not churn (and fragment) the C heap with a large block per call. */
  uint8_t *scratch;
  size_t scratch_capacity;
} ZstdContext;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref;
  /* Keeps the context's JavaScript handle, hence the context, alive while the job runs. */
  napi_ref context_ref;
  ZstdContext *context;
  const uint8_t *input;
  size_t input_length;
  bool end;
  size_t output_length;
  const char *error;
} ZstdJob;

static void zstd_context_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  ZstdContext *context = data;
  if (context->cctx) ZSTD_freeCCtx(context->cctx);
  free(context->scratch);
  free(context);
}

static bool zstd_grow(ZstdContext *context, size_t used, size_t need) {
  if (context->scratch_capacity - used >= need) return true;
  size_t capacity = context->scratch_capacity ? context->scratch_capacity : need;
  while (capacity - used < need) capacity *= 2;
  uint8_t *grown = realloc(context->scratch, capacity);
  if (grown == NULL) return false;
  context->scratch = grown;
  context->scratch_capacity = capacity;
  return true;
}

static void zstd_execute(napi_env env, void *data) {
  (void)env;
  ZstdJob *job = data;
  ZstdContext *context = job->context;
  ZSTD_inBuffer in = {job->input, job->input_length, 0};
  const size_t step = ZSTD_CStreamOutSize();
  for (;;) {
    if (!zstd_grow(context, job->output_length, step)) {
      job->error = "out of memory";
      return;
    }
    ZSTD_outBuffer out = {context->scratch + job->output_length, context->scratch_capacity - job->output_length, 0};
    size_t remaining = ZSTD_compressStream2(context->cctx, &out, &in, job->end ? ZSTD_e_end : ZSTD_e_continue);
    job->output_length += out.pos;
    if (ZSTD_isError(remaining)) {
      job->error = ZSTD_getErrorName(remaining);
      return;
    }
    /* Continue: done once all input is taken (libzstd keeps the rest for the next call or the
     * end). End: done once the frame is complete. */
    if (job->end ? remaining == 0 : in.pos == in.size) return;
  }
}

static void zstd_complete(napi_env env, napi_status status, void *data) {
  ZstdJob *job = data;
  job->context->busy = false;
  napi_value result = NULL;
  void *copy;
  if (status != napi_ok || job->error != NULL ||
      napi_create_buffer_copy(env, job->output_length, job->context->scratch, &copy, &result) != napi_ok)
    result = NULL;
  settle(env, job->deferred, status, result, job->error, "could not return the compressed bytes");
  napi_delete_reference(env, job->input_ref);
  napi_delete_reference(env, job->context_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

static ZstdContext *zstd_context_arg(napi_env env, napi_value value) { return external_arg(env, value, "not a zstd context"); }

static napi_value zstd_create(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t level = 0, workers = 0, job_size = 0;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &level) != napi_ok || napi_get_value_int32(env, argv[1], &workers) != napi_ok ||
      napi_get_value_int32(env, argv[2], &job_size) != napi_ok) {
    napi_throw_type_error(env, NULL, "zstdCreate(level: number, workers: number, jobSize: number)");
    return NULL;
  }
  if (level < 1 || level > ZSTD_maxCLevel() || workers < 0 || workers > 256 || job_size < 0) {
    napi_throw_range_error(env, NULL, "zstd level or worker count out of range");
    return NULL;
  }
  ZstdContext *context = calloc(1, sizeof *context);
  if (context == NULL || (context->cctx = ZSTD_createCCtx()) == NULL) {
    free(context);
    napi_throw_error(env, NULL, "zstd: out of memory");
    return NULL;
  }
  size_t r = ZSTD_CCtx_setParameter(context->cctx, ZSTD_c_compressionLevel, level);
  if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(context->cctx, ZSTD_c_checksumFlag, 1);
  /* Without multithreading support in this libzstd, one thread: still correct, only slower. */
  if (!ZSTD_isError(r) && workers > 0 && ZSTD_isError(ZSTD_CCtx_setParameter(context->cctx, ZSTD_c_nbWorkers, workers))) workers = 0;
  /* The job size (the program's -B): 0 is libzstd's default. Part of the frame's bytes. */
  if (!ZSTD_isError(r) && workers > 0 && job_size > 0) r = ZSTD_CCtx_setParameter(context->cctx, ZSTD_c_jobSize, job_size);
  if (ZSTD_isError(r)) {
    zstd_context_finalize(env, context, NULL);
    napi_throw_error(env, NULL, ZSTD_getErrorName(r));
    return NULL;
  }
  napi_value result;
  if (napi_create_external(env, context, zstd_context_finalize, NULL, &result) != napi_ok) {
    zstd_context_finalize(env, context, NULL);
    napi_throw_error(env, NULL, "zstd: could not create the context");
    return NULL;
  }
  return result;
}

static napi_value zstd_compress(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) {
    napi_throw_type_error(env, NULL, "zstdCompress(context, input: Buffer, end: boolean)");
    return NULL;
  }
  ZstdContext *context = zstd_context_arg(env, argv[0]);
  if (context == NULL) return NULL;
  bool is_buffer = false, end = false;
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer || napi_get_value_bool(env, argv[2], &end) != napi_ok) {
    napi_throw_type_error(env, NULL, "zstdCompress(context, input: Buffer, end: boolean)");
    return NULL;
  }
  if (context->busy || context->cctx == NULL) {
    napi_throw_error(env, NULL, context->cctx ? "zstd context already compressing" : "zstd context freed");
    return NULL;
  }
  ZstdJob *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  void *input;
  CHECK(env, napi_get_buffer_info(env, argv[1], &input, &job->input_length));
  job->input = input;
  job->end = end;
  job->context = context;
  CHECK(env, napi_create_reference(env, argv[1], 1, &job->input_ref));
  CHECK(env, napi_create_reference(env, argv[0], 1, &job->context_ref));
  napi_value promise = queue_work(env, "smartlayer.zstdCompress", zstd_execute, zstd_complete, job, &job->work, &job->deferred);
  if (promise == NULL) {
    napi_delete_reference(env, job->input_ref);
    napi_delete_reference(env, job->context_ref);
    free(job);
    return NULL;
  }
  context->busy = true;
  return promise;
}

static napi_value zstd_free(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return NULL;
  ZstdContext *context = zstd_context_arg(env, argv[0]);
  if (context == NULL) return NULL;
  if (context->busy) {
    napi_throw_error(env, NULL, "zstd context freed while compressing");
    return NULL;
  }
  if (context->cctx) ZSTD_freeCCtx(context->cctx);
  context->cctx = NULL;
  free(context->scratch);
  context->scratch = NULL;
  context->scratch_capacity = 0;
  return NULL;
}
#endif /* SMART_HAVE_ZSTD */

#if defined(__linux__) || defined(__GLIBC__)
/* The one argument of a function that takes a size: false, with a TypeError saying `usage`
 * pending, when it is missing, not an int32 or negative. */
static bool size_arg(napi_env env, napi_callback_info info, const char *usage, int32_t *out) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], out) != napi_ok || *out < 0) {
    napi_throw_type_error(env, NULL, usage);
    return false;
  }
  return true;
}
#endif

#ifdef __linux__
/* SHA-256 with the OpenSSL the process already has (Node's), found by name at load time: no
 * header and no link-time dependency, and nothing exported when it is not there. */
typedef struct smart_evp_md_ctx SMART_EVP_MD_CTX;
typedef struct smart_evp_md SMART_EVP_MD;
static struct {
  SMART_EVP_MD_CTX *(*ctx_new)(void);
  void (*ctx_free)(SMART_EVP_MD_CTX *);
  const SMART_EVP_MD *(*sha256)(void);
  int (*init)(SMART_EVP_MD_CTX *, const SMART_EVP_MD *, void *);
  int (*update)(SMART_EVP_MD_CTX *, const void *, size_t);
  int (*final)(SMART_EVP_MD_CTX *, unsigned char *, unsigned int *);
} evp;

static bool evp_load(void) {
  *(void **)&evp.ctx_new = dlsym(RTLD_DEFAULT, "EVP_MD_CTX_new");
  *(void **)&evp.ctx_free = dlsym(RTLD_DEFAULT, "EVP_MD_CTX_free");
  *(void **)&evp.sha256 = dlsym(RTLD_DEFAULT, "EVP_sha256");
  *(void **)&evp.init = dlsym(RTLD_DEFAULT, "EVP_DigestInit_ex");
  *(void **)&evp.update = dlsym(RTLD_DEFAULT, "EVP_DigestUpdate");
  *(void **)&evp.final = dlsym(RTLD_DEFAULT, "EVP_DigestFinal_ex");
  return evp.ctx_new && evp.ctx_free && evp.sha256 && evp.init && evp.update && evp.final;
}

static void to_hex(const unsigned char *digest, char *hex) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    hex[2 * i] = digits[digest[i] >> 4];
    hex[2 * i + 1] = digits[digest[i] & 15];
  }
  hex[64] = 0;
}

typedef struct {
  SMART_EVP_MD_CTX *ctx;
  bool busy;
  bool done;
} Sha256Context;

static void sha256_context_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  Sha256Context *context = data;
  if (context->ctx) evp.ctx_free(context->ctx);
  free(context);
}

static Sha256Context *sha256_context_arg(napi_env env, napi_value value) { return external_arg(env, value, "not a sha256 context"); }

static napi_value sha256_create(napi_env env, napi_callback_info info) {
  (void)info;
  Sha256Context *context = calloc(1, sizeof *context);
  if (context == NULL || (context->ctx = evp.ctx_new()) == NULL || evp.init(context->ctx, evp.sha256(), NULL) != 1) {
    if (context && context->ctx) evp.ctx_free(context->ctx);
    free(context);
    napi_throw_error(env, NULL, "sha256: could not create the context");
    return NULL;
  }
  napi_value result;
  if (napi_create_external(env, context, sha256_context_finalize, NULL, &result) != napi_ok) {
    sha256_context_finalize(env, context, NULL);
    napi_throw_error(env, NULL, "sha256: could not create the context");
    return NULL;
  }
  return result;
}

/* The Buffers of a JavaScript array, for a job on the pool: their bytes and lengths, kept alive by a
 * reference to the array until the job is freed. */
typedef struct {
  uint32_t count;
  const uint8_t **data;
  size_t *lengths;
  napi_ref ref;
} BufferList;

/* Fills `list` from `array`; false with an exception pending (a TypeError saying `error` when an
 * element is not a Buffer). Whatever it took is released by buffer_list_free, either way. */
static bool buffer_list_take(napi_env env, napi_value array, BufferList *list, const char *error) {
  if (napi_get_array_length(env, array, &list->count) != napi_ok) {
    napi_throw_type_error(env, NULL, error);
    return false;
  }
  if (list->count > 0 && ((list->data = calloc(list->count, sizeof *list->data)) == NULL || (list->lengths = calloc(list->count, sizeof *list->lengths)) == NULL)) {
    napi_throw_error(env, NULL, "out of memory");
    return false;
  }
  for (uint32_t i = 0; i < list->count; i++) {
    napi_value chunk;
    bool is_buffer = false;
    void *bytes;
    if (napi_get_element(env, array, i, &chunk) != napi_ok || napi_is_buffer(env, chunk, &is_buffer) != napi_ok || !is_buffer ||
        napi_get_buffer_info(env, chunk, &bytes, &list->lengths[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, error);
      return false;
    }
    list->data[i] = bytes;
  }
  if (napi_create_reference(env, array, 1, &list->ref) != napi_ok) {
    napi_throw_error(env, NULL, "could not keep the chunks");
    return false;
  }
  return true;
}

static void buffer_list_free(napi_env env, BufferList *list) {
  if (list->ref) napi_delete_reference(env, list->ref);
  free(list->data);
  free(list->lengths);
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref context_ref;
  Sha256Context *context;
  BufferList chunks;
  const char *error;
} Sha256Job;

static void sha256_update_execute(napi_env env, void *data) {
  (void)env;
  Sha256Job *job = data;
  for (uint32_t i = 0; i < job->chunks.count; i++) {
    if (evp.update(job->context->ctx, job->chunks.data[i], job->chunks.lengths[i]) != 1) {
      job->error = "sha256: update failed";
      return;
    }
  }
}

static void sha256_job_free(napi_env env, Sha256Job *job) {
  buffer_list_free(env, &job->chunks);
  if (job->context_ref) napi_delete_reference(env, job->context_ref);
  if (job->work) napi_delete_async_work(env, job->work);
  free(job);
}

static void sha256_update_complete(napi_env env, napi_status status, void *data) {
  Sha256Job *job = data;
  job->context->busy = false;
  napi_value result = NULL;
  if (status == napi_ok && job->error == NULL && napi_get_undefined(env, &result) != napi_ok) result = NULL;
  settle(env, job->deferred, status, result, job->error, "sha256: the update did not run");
  sha256_job_free(env, job);
}

static napi_value sha256_update(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool is_array = false;
  if (argc < 2 || napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array) {
    napi_throw_type_error(env, NULL, "sha256Update(context, chunks: Buffer[])");
    return NULL;
  }
  Sha256Context *context = sha256_context_arg(env, argv[0]);
  if (context == NULL) return NULL;
  if (context->busy || context->done) {
    napi_throw_error(env, NULL, context->done ? "sha256 context already digested" : "sha256 context already hashing");
    return NULL;
  }
  Sha256Job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  job->context = context;
  if (!buffer_list_take(env, argv[1], &job->chunks, "sha256Update: every chunk must be a Buffer")) {
    sha256_job_free(env, job);
    return NULL;
  }
  if (napi_create_reference(env, argv[0], 1, &job->context_ref) != napi_ok) {
    sha256_job_free(env, job);
    napi_throw_error(env, NULL, "sha256: could not keep the context");
    return NULL;
  }
  napi_value promise = queue_work(env, "smartlayer.sha256Update", sha256_update_execute, sha256_update_complete, job, &job->work, &job->deferred);
  if (promise == NULL) {
    job->work = NULL; /* deleted by queue_work */
    sha256_job_free(env, job);
    return NULL;
  }
  context->busy = true;
  return promise;
}

static napi_value sha256_digest(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return NULL;
  Sha256Context *context = sha256_context_arg(env, argv[0]);
  if (context == NULL) return NULL;
  if (context->busy || context->done) {
    napi_throw_error(env, NULL, context->done ? "sha256 context already digested" : "sha256 context still hashing");
    return NULL;
  }
  unsigned char digest[32];
  unsigned int length = 0;
  if (evp.final(context->ctx, digest, &length) != 1 || length != 32) {
    napi_throw_error(env, NULL, "sha256: final failed");
    return NULL;
  }
  context->done = true;
  char hex[65];
  to_hex(digest, hex);
  napi_value result;
  CHECK(env, napi_create_string_latin1(env, hex, 64, &result));
  return result;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  char *path;
  double limit;
  double bytes;
  char hex[65];
  const char *error;
  int error_number;
} Sha256FileJob;

static void sha256_file_execute(napi_env env, void *data) {
  (void)env;
  Sha256FileJob *job = data;
  const size_t size = 1 << 20;
  uint8_t *buffer = malloc(size);
  SMART_EVP_MD_CTX *ctx = evp.ctx_new();
  int fd = -1;
  if (buffer == NULL || ctx == NULL || evp.init(ctx, evp.sha256(), NULL) != 1) {
    job->error = "sha256: out of memory";
    goto out;
  }
  fd = open(job->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    job->error_number = errno;
    goto out;
  }
  for (;;) {
    ssize_t n = read(fd, buffer, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      job->error_number = errno;
      goto out;
    }
    if (n == 0) break;
    job->bytes += (double)n;
    /* Past the limit the file is too long already: no need to read or hash the rest. */
    if (job->bytes > job->limit) break;
    if (evp.update(ctx, buffer, (size_t)n) != 1) {
      job->error = "sha256: update failed";
      goto out;
    }
  }
  unsigned char digest[32];
  unsigned int length = 0;
  if (evp.final(ctx, digest, &length) != 1 || length != 32) {
    job->error = "sha256: final failed";
    goto out;
  }
  to_hex(digest, job->hex);
out:
  if (fd >= 0) close(fd);
  if (ctx) evp.ctx_free(ctx);
  free(buffer);
}

static void sha256_file_complete(napi_env env, napi_status status, void *data) {
  Sha256FileJob *job = data;
  napi_value result = NULL, hex, bytes;
  if (status == napi_ok && job->error == NULL && job->error_number != 0) {
    /* A system error, as Node's own: an Error with its errno name in `code`, rejected here. */
    napi_value message, code, reason;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
    const char *name = strerrorname_np(job->error_number);
#else
    const char *name = NULL;
#endif
    if (name == NULL) name = job->error_number == ENOENT ? "ENOENT" : job->error_number == EACCES ? "EACCES" : job->error_number == EISDIR ? "EISDIR" : "EIO";
    char text[512];
    snprintf(text, sizeof text, "%s: %s", strerror(job->error_number), job->path);
    if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message) == napi_ok && napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) == napi_ok &&
        napi_create_error(env, code, message, &reason) == napi_ok) {
      napi_reject_deferred(env, job->deferred, reason);
      goto done;
    }
  }
  if (status == napi_ok && job->error == NULL && job->error_number == 0 && napi_create_array_with_length(env, 2, &result) == napi_ok &&
      napi_create_string_latin1(env, job->hex, 64, &hex) == napi_ok && napi_create_double(env, job->bytes, &bytes) == napi_ok &&
      napi_set_element(env, result, 0, hex) == napi_ok && napi_set_element(env, result, 1, bytes) == napi_ok) {
  } else {
    result = NULL;
  }
  settle(env, job->deferred, status, result, job->error, "sha256: could not read the file");
done:
  napi_delete_async_work(env, job->work);
  free(job->path);
  free(job);
}

static napi_value sha256_file(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  size_t length = 0;
  double limit = 0;
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], NULL, 0, &length) != napi_ok || napi_get_value_double(env, argv[1], &limit) != napi_ok || limit < 0) {
    napi_throw_type_error(env, NULL, "sha256File(path: string, limit: number)");
    return NULL;
  }
  Sha256FileJob *job = calloc(1, sizeof *job);
  if (job == NULL || (job->path = malloc(length + 1)) == NULL) {
    free(job);
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[0], job->path, length + 1, &length);
  job->limit = limit;
  napi_value promise = queue_work(env, "smartlayer.sha256File", sha256_file_execute, sha256_file_complete, job, &job->work, &job->deferred);
  if (promise == NULL) {
    free(job->path);
    free(job);
    return NULL;
  }
  return promise;
}

#if defined(SMART_HAVE_ISAL) && defined(__linux__)
/* gunzip on the pool: ISA-L's inflate (the code of the igzip program), and for a local file the
 * file read and hashed in the same job. A pull of a layer was an igzip process and its output
 * through a pipe into the main thread in 64 KiB chunks: a fork (~10 ms of the main thread with a
 * large heap), two kernel copies of every byte, and JavaScript per chunk. Here the main thread gets
 * 2 MiB chunks. The output's digest is not taken here: hashed by other jobs, it runs alongside the
 * next inflate instead of after it (a layer's decoding is what a pull into a tree waits for). */
enum {
  GUNZIP_NEED_INPUT = 0, /* every input byte is taken: call again with more (or with end) */
  GUNZIP_MORE = 1,       /* the output is full: call again */
  GUNZIP_DONE = 2,       /* the stream is over: every member read, the digests final */
  GUNZIP_TRUNCATED = -100,
  GUNZIP_NOT_GZIP = -101,
  GUNZIP_READ_ERROR = -102,
  GUNZIP_TOO_LONG = -103, /* the file has more bytes than the limit */
};
enum { PHASE_BETWEEN, PHASE_MEMBER, PHASE_TRAILING };

/* What a local file is read in: big enough to keep system calls few, small enough for the cache. */
#define GUNZIP_FILE_READ (256 * 1024)

typedef struct {
  /* Allocated apart, and freed with the input buffer and the hash once the stream is over (see
   * gunzip_release): the context itself lives until a GC, ~100 KiB of it per layer. */
  struct inflate_state *state;
  int fd;       /* -1: the input comes with each call */
  double limit; /* the file's expected size: reading stops once past it */
  uint8_t *in;
  size_t in_cap, in_pos, in_len;
  double in_total;
  bool input_ended, too_long, busy, finished;
  int failure;
  int phase;
  uint32_t members;
  SMART_EVP_MD_CTX *in_hash;
} GunzipContext;

/* What a context holds beyond itself, given back once its stream is over (finished) or it goes. */
static void gunzip_release(GunzipContext *c) {
  if (c->in_hash) evp.ctx_free(c->in_hash);
  c->in_hash = NULL;
  free(c->in);
  c->in = NULL;
  c->in_cap = c->in_pos = c->in_len = 0;
  free(c->state);
  c->state = NULL;
}

static void gunzip_context_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  GunzipContext *c = data;
  gunzip_release(c);
  free(c);
}

static napi_value gunzip_create(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd = -1;
  double limit = 0;
  bool hash = true;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_double(env, argv[1], &limit) != napi_ok || fd < -1 || limit < 0 ||
      (argc > 2 && napi_get_value_bool(env, argv[2], &hash) != napi_ok)) {
    napi_throw_type_error(env, NULL, "gunzipCreate(fd: number (-1: input by calls), limit: number, hash?: boolean)");
    return NULL;
  }
  GunzipContext *c = calloc(1, sizeof *c);
  bool ok = c != NULL && (c->state = calloc(1, sizeof *c->state)) != NULL;
  if (ok && fd >= 0) {
    ok = (!hash || ((c->in_hash = evp.ctx_new()) != NULL && evp.init(c->in_hash, evp.sha256(), NULL) == 1)) && (c->in = malloc(GUNZIP_FILE_READ)) != NULL;
    if (ok) c->in_cap = GUNZIP_FILE_READ;
  }
  napi_value result;
  if (!ok || napi_create_external(env, c, gunzip_context_finalize, NULL, &result) != napi_ok) {
    if (c) gunzip_context_finalize(env, c, NULL);
    napi_throw_error(env, NULL, "gunzip: could not create the context");
    return NULL;
  }
  c->fd = fd;
  c->limit = limit;
  c->phase = PHASE_BETWEEN;
  isal_inflate_init(c->state);
  return result;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref context_ref;
  GunzipContext *context;
  BufferList chunks;
  bool end;
  size_t out_cap, out_len;
  uint8_t *out;
  int status;
  int error_number;
  const char *error;
  char in_hex[65];
} GunzipJob;

/* Reads the next part of the file after what is left unread; false on a read error. */
static bool gunzip_fill(GunzipContext *c, GunzipJob *job) {
  if (c->in_pos > 0) {
    memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
    c->in_len -= c->in_pos;
    c->in_pos = 0;
  }
  if (c->in_len == c->in_cap) {
    /* All of it unread and more wanted (inflate took none of it): room for more, never a read of
     * nothing that would look like the end of the file. */
    uint8_t *grown = realloc(c->in, c->in_cap * 2);
    if (grown == NULL) {
      job->error_number = ENOMEM;
      return false;
    }
    c->in = grown;
    c->in_cap *= 2;
  }
  for (;;) {
    ssize_t n = pread(c->fd, c->in + c->in_len, c->in_cap - c->in_len, (off_t)c->in_total);
    if (n < 0) {
      if (errno == EINTR) continue;
      job->error_number = errno;
      return false;
    }
    if (n == 0) {
      c->input_ended = true;
      return true;
    }
    c->in_total += (double)n;
    if (c->in_total > c->limit) {
      c->input_ended = c->too_long = true;
      return true;
    }
    if (c->in_hash) evp.update(c->in_hash, c->in + c->in_len, (size_t)n);
    c->in_len += (size_t)n;
    return true;
  }
}

/* More input: the status to return when there is none to be had now, or 1 to go on. */
static int gunzip_more_input(GunzipContext *c, GunzipJob *job) {
  if (c->fd < 0) return GUNZIP_NEED_INPUT;
  if (!gunzip_fill(c, job)) return GUNZIP_READ_ERROR;
  if (c->too_long) return GUNZIP_TOO_LONG;
  return 1;
}

/* Inflates into job->out until it is full, the input is all taken, or the stream is over. */
static int gunzip_step(GunzipContext *c, GunzipJob *job) {
  for (;;) {
    size_t avail = c->in_len - c->in_pos;
    if (c->phase != PHASE_MEMBER) {
      /* Between members: another one when the next bytes are gzip's magic; anything else after a
       * member is ignored, as the igzip and gzip programs do (the data is whole, and a pull checks
       * its digest); before the first one it is not gzip. */
      if (c->phase == PHASE_TRAILING) c->in_pos = c->in_len, avail = 0;
      if (avail < 2 && !c->input_ended) {
        int more = gunzip_more_input(c, job);
        if (more != 1) return more;
        continue;
      }
      if (c->phase == PHASE_TRAILING) return GUNZIP_DONE;
      if (avail == 0) return c->members > 0 ? GUNZIP_DONE : GUNZIP_TRUNCATED;
      const uint8_t *p = c->in + c->in_pos;
      if (avail >= 2 && p[0] == 0x1f && p[1] == 0x8b) {
        isal_inflate_reset(c->state);
        c->state->crc_flag = ISAL_GZIP;
        c->phase = PHASE_MEMBER;
      } else if (c->members == 0) {
        return avail < 2 && p[0] == 0x1f ? GUNZIP_TRUNCATED : GUNZIP_NOT_GZIP;
      } else {
        c->phase = PHASE_TRAILING;
        continue;
      }
    }
    if (job->out_len == job->out_cap) return GUNZIP_MORE;
    if (avail == 0) {
      if (c->input_ended) return GUNZIP_TRUNCATED;
      int more = gunzip_more_input(c, job);
      if (more != 1) return more;
      continue;
    }
    uint32_t in_chunk = avail > UINT32_MAX ? UINT32_MAX : (uint32_t)avail;
    uint32_t out_room = (uint32_t)(job->out_cap - job->out_len);
    c->state->next_in = c->in + c->in_pos;
    c->state->avail_in = in_chunk;
    c->state->next_out = job->out + job->out_len;
    c->state->avail_out = out_room;
    int rc = isal_inflate(c->state);
    size_t used = in_chunk - c->state->avail_in, made = out_room - c->state->avail_out;
    c->in_pos += used;
    job->out_len += made;
    if (rc < 0) return rc;
    if (c->state->block_state == ISAL_BLOCK_FINISH) {
      c->members++;
      c->phase = PHASE_BETWEEN;
      continue;
    }
    if (used == 0 && made == 0) {
      /* Nothing to be done with what is here (part of a header): more input, if there is any. */
      if (c->input_ended) return GUNZIP_TRUNCATED;
      int more = gunzip_more_input(c, job);
      if (more != 1) return more;
    }
  }
}

/* Output memory: a region of its own, on huge pages where the kernel gives them (madvise). Each
 * page first touched costs a fault, ~15 us on the VMs CI runs on: 150 MB of output in 4 KiB pages
 * was a third of the job's time. The region is 2 MiB-aligned, as a huge page must be. */
#define GUNZIP_HUGE (2u << 20)

/* Outputs up to this size are copied into a buffer of their own (see gunzip_complete). */
#define GUNZIP_COPY_BELOW (256 * 1024)

static size_t gunzip_region_size(size_t cap) { return (cap + GUNZIP_HUGE - 1) & ~(size_t)(GUNZIP_HUGE - 1); }

/* Regions given back (their Buffer collected, or an output copied out) are kept for the next
 * output, up to GUNZIP_SPARES of them (16 MiB): a fresh region costs its huge page zeroed by the
 * kernel on first touch, and on the VMs CI runs on the host's faults behind that. A cold pull of a
 * 73 MB layer from a loopback registry into tmpfs spent 14% of its CPU samples (a third of the
 * pool's) zeroing fresh output regions, more than inflating; with regions reused, 4%, and the
 * pull 0.76 -> 0.69 s (medians of 13 alternated). A region is reused as it is: an output's Buffer
 * shows only the bytes written. Outputs are freed on the main thread (GC, or the job's end) and
 * made on the pool: a lock. */
#define GUNZIP_SPARES 8
static pthread_mutex_t gunzip_spare_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *gunzip_spare[GUNZIP_SPARES];
static size_t gunzip_spare_size[GUNZIP_SPARES];
static int gunzip_spares;

static uint8_t *gunzip_output_alloc(size_t cap) {
  size_t size = gunzip_region_size(cap);
  uint8_t *spare = NULL;
  pthread_mutex_lock(&gunzip_spare_lock);
  for (int i = gunzip_spares - 1; i >= 0; i--) {
    if (gunzip_spare_size[i] != size) continue;
    spare = gunzip_spare[i];
    gunzip_spares--;
    gunzip_spare[i] = gunzip_spare[gunzip_spares];
    gunzip_spare_size[i] = gunzip_spare_size[gunzip_spares];
    break;
  }
  pthread_mutex_unlock(&gunzip_spare_lock);
  if (spare) return spare;
  uint8_t *p = mmap(NULL, size + GUNZIP_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  uintptr_t aligned = ((uintptr_t)p + GUNZIP_HUGE - 1) & ~(uintptr_t)(GUNZIP_HUGE - 1);
  size_t head = aligned - (uintptr_t)p;
  if (head > 0) munmap(p, head);
  if (GUNZIP_HUGE - head > 0) munmap((uint8_t *)aligned + size, GUNZIP_HUGE - head);
  (void)madvise((void *)aligned, size, MADV_HUGEPAGE);
  return (uint8_t *)aligned;
}

static void gunzip_output_free(uint8_t *p, size_t cap) {
  if (!p) return;
  size_t size = gunzip_region_size(cap);
  pthread_mutex_lock(&gunzip_spare_lock);
  bool kept = gunzip_spares < GUNZIP_SPARES;
  if (kept) {
    gunzip_spare[gunzip_spares] = p;
    gunzip_spare_size[gunzip_spares] = size;
    gunzip_spares++;
  }
  pthread_mutex_unlock(&gunzip_spare_lock);
  if (!kept) munmap(p, size);
}

/* Frees an output handed to JavaScript (the hint carries its capacity). */
static void gunzip_output_finalize(napi_env env, void *data, void *hint) {
  int64_t adjusted;
  size_t cap = (size_t)(uintptr_t)hint;
  napi_adjust_external_memory(env, -(int64_t)gunzip_region_size(cap), &adjusted);
  gunzip_output_free(data, cap);
}

static void gunzip_final(SMART_EVP_MD_CTX *hash, char *hex) {
  unsigned char digest[32];
  unsigned int length = 0;
  if (evp.final(hash, digest, &length) == 1 && length == 32) to_hex(digest, hex);
}

static void gunzip_execute(napi_env env, void *data) {
  (void)env;
  GunzipJob *job = data;
  GunzipContext *c = job->context;
  if (c->finished) {
    job->status = c->failure ? c->failure : GUNZIP_DONE;
    return;
  }
  if (c->fd < 0) {
    /* The chunks after what the last call left: kept here, so that a call may stop short of them. */
    size_t add = 0;
    for (uint32_t i = 0; i < job->chunks.count; i++) add += job->chunks.lengths[i];
    if (c->in_pos > 0) {
      memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
      c->in_len -= c->in_pos;
      c->in_pos = 0;
    }
    if (c->in_len + add > c->in_cap) {
      size_t cap = c->in_cap * 2 > c->in_len + add ? c->in_cap * 2 : c->in_len + add;
      uint8_t *grown = realloc(c->in, cap);
      if (grown == NULL) {
        job->error = "out of memory";
        return;
      }
      c->in = grown;
      c->in_cap = cap;
    }
    for (uint32_t i = 0; i < job->chunks.count; i++) {
      memcpy(c->in + c->in_len, job->chunks.data[i], job->chunks.lengths[i]);
      c->in_len += job->chunks.lengths[i];
    }
    c->in_total += (double)add;
    if (job->end) c->input_ended = true;
  }
  job->out = gunzip_output_alloc(job->out_cap);
  if (job->out == NULL) {
    job->error = "out of memory";
    return;
  }
  job->status = gunzip_step(c, job);
  if (job->status == GUNZIP_DONE) {
    c->finished = true;
    if (c->in_hash) gunzip_final(c->in_hash, job->in_hex);
  } else if (job->status < 0) {
    c->finished = true;
    c->failure = job->status;
    /* A corrupt stream in a file: the rest is hashed too, for the caller to say whether the file
     * is not what its digest says (the cause to name) or the blob itself is bad. */
    if (c->in_hash && job->status != GUNZIP_READ_ERROR && job->status != GUNZIP_TOO_LONG) {
      while (!c->input_ended) {
        c->in_pos = c->in_len = 0;
        if (!gunzip_fill(c, job)) {
          job->status = c->failure = GUNZIP_READ_ERROR;
          return;
        }
      }
      if (!c->too_long) gunzip_final(c->in_hash, job->in_hex);
    }
  }
}

static void gunzip_job_free(napi_env env, GunzipJob *job) {
  buffer_list_free(env, &job->chunks);
  if (job->context_ref) napi_delete_reference(env, job->context_ref);
  if (job->work) napi_delete_async_work(env, job->work);
  gunzip_output_free(job->out, job->out_cap);
  free(job);
}

static void gunzip_complete(napi_env env, napi_status status, void *data) {
  GunzipJob *job = data;
  GunzipContext *c = job->context;
  c->busy = false;
  napi_value result = NULL, output = NULL, value;
  bool ok = status == napi_ok && job->error == NULL && napi_create_array_with_length(env, 5, &result) == napi_ok;
  if (ok && job->out_len > 0 && job->out_len <= GUNZIP_COPY_BELOW) {
    /* A short output (a small layer, the end of a large one) is copied out and its region unmapped
     * now: handed over, each held a 2 MiB huge page until a GC, and a pull of many small layers
     * grew by that much per layer (400 layers of 43 KiB in all: 158 MB peak RSS, 82 MB on zlib). */
    void *copy;
    ok = napi_create_buffer_copy(env, job->out_len, job->out, &copy, &output) == napi_ok;
  } else if (ok && job->out_len > 0) {
    ok = napi_create_external_buffer(env, job->out_len, job->out, gunzip_output_finalize, (void *)(uintptr_t)job->out_cap, &output) == napi_ok;
    if (ok) {
      int64_t adjusted;
      napi_adjust_external_memory(env, (int64_t)gunzip_region_size(job->out_cap), &adjusted);
      job->out = NULL; /* owned by the Buffer now */
    }
  } else if (ok) {
    ok = napi_create_buffer(env, 0, NULL, &output) == napi_ok;
  }
  ok = ok && napi_set_element(env, result, 0, output) == napi_ok;
  ok = ok && napi_create_int32(env, job->status, &value) == napi_ok && napi_set_element(env, result, 1, value) == napi_ok;
  ok = ok && napi_create_double(env, c->in_total, &value) == napi_ok && napi_set_element(env, result, 2, value) == napi_ok;
  ok = ok && napi_create_int32(env, job->error_number, &value) == napi_ok && napi_set_element(env, result, 3, value) == napi_ok;
  if (ok && job->in_hex[0]) ok = napi_create_string_latin1(env, job->in_hex, 64, &value) == napi_ok && napi_set_element(env, result, 4, value) == napi_ok;
  settle(env, job->deferred, status, ok ? result : NULL, job->error, "gunzip: the work did not run");
  if (c->finished) gunzip_release(c);
  gunzip_job_free(env, job);
}

static napi_value gunzip_run(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool is_array = false, end = false;
  int32_t out_cap = 0;
  if (argc < 4 || napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array || napi_get_value_bool(env, argv[2], &end) != napi_ok ||
      napi_get_value_int32(env, argv[3], &out_cap) != napi_ok || out_cap <= 0) {
    napi_throw_type_error(env, NULL, "gunzipRun(context, chunks: Buffer[], end: boolean, outputBytes: number)");
    return NULL;
  }
  GunzipContext *c = external_arg(env, argv[0], "not a gunzip context");
  if (c == NULL) return NULL;
  if (c->busy) {
    napi_throw_error(env, NULL, "gunzip context already running");
    return NULL;
  }
  GunzipJob *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  job->context = c;
  job->end = end;
  job->out_cap = (size_t)out_cap;
  if (!buffer_list_take(env, argv[1], &job->chunks, "gunzipRun: every chunk must be a Buffer")) {
    gunzip_job_free(env, job);
    return NULL;
  }
  if (job->chunks.count > 0 && c->fd >= 0) {
    gunzip_job_free(env, job);
    napi_throw_type_error(env, NULL, "gunzipRun: a context that reads a file takes no chunks");
    return NULL;
  }
  if (napi_create_reference(env, argv[0], 1, &job->context_ref) != napi_ok) {
    gunzip_job_free(env, job);
    napi_throw_error(env, NULL, "gunzip: could not keep the context");
    return NULL;
  }
  napi_value promise = queue_work(env, "smartlayer.gunzipRun", gunzip_execute, gunzip_complete, job, &job->work, &job->deferred);
  if (promise == NULL) {
    job->work = NULL; /* deleted by queue_work */
    gunzip_job_free(env, job);
    return NULL;
  }
  c->busy = true;
  return promise;
}
#endif /* SMART_HAVE_ISAL && __linux__ */

static napi_value make_pipe(napi_env env, napi_callback_info info) {
  int32_t bytes = 0;
  if (!size_arg(env, info, "makePipe(bytes): a size in bytes", &bytes)) return NULL;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    napi_throw_error(env, NULL, strerror(errno));
    return NULL;
  }
  if (bytes > 0) (void)fcntl(fds[1], F_SETPIPE_SZ, bytes);
  napi_value out, fd;
  CHECK(env, napi_create_array_with_length(env, 2, &out));
  for (uint32_t i = 0; i < 2; i++) {
    CHECK(env, napi_create_int32(env, fds[i], &fd));
    CHECK(env, napi_set_element(env, out, i, fd));
  }
  return out;
}
#endif

#ifdef __linux__
/* A Buffer's bytes with a NUL after them (malloc'ed; NULL when out of memory), or NULL with
 * *has_nul set when the bytes hold a NUL of their own (no path or name may). */
static char *c_string(const void *data, size_t len, bool *has_nul) {
  *has_nul = len > 0 && memchr(data, 0, len) != NULL;
  if (*has_nul) return NULL;
  char *out = malloc(len + 1);
  if (out == NULL) return NULL;
  if (len > 0) memcpy(out, data, len);
  out[len] = 0;
  return out;
}

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

/* The `n` (at most 3) Buffer arguments of a call, their bytes and lengths; false (a TypeError thrown, `usage`) if one is not a Buffer. */
static bool buffer_args(napi_env env, napi_callback_info info, size_t n, void **data, size_t *len, const char *usage) {
  size_t argc = 3;
  napi_value argv[3];
  bool is_buffer = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    napi_throw_error(env, NULL, "smartlayer native: napi_get_cb_info");
    return false;
  }
  for (size_t i = 0; i < n; i++, is_buffer = false) {
    if (i < argc && napi_is_buffer(env, argv[i], &is_buffer) != napi_ok) is_buffer = false;
    if (!is_buffer || napi_get_buffer_info(env, argv[i], &data[i], &len[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, usage);
      return false;
    }
  }
  return true;
}

static napi_value exchange_paths(napi_env env, napi_callback_info info) {
  void *data[2];
  size_t len[2];
  if (!buffer_args(env, info, 2, data, len, "exchangePaths(a: Buffer, b: Buffer)")) return NULL;
  bool a_nul = false, b_nul = false;
  char *a = c_string(data[0], len[0], &a_nul);
  char *b = c_string(data[1], len[1], &b_nul);
  int err = 0;
  if (a_nul || b_nul) err = EINVAL;
  else if (a == NULL || b == NULL) err = ENOMEM;
#ifdef SYS_renameat2
  /* The system call itself: glibc's wrapper is 2.28+, and older C libraries have none. */
  else if (syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0) err = errno;
#else
  else err = ENOSYS;
#endif
  free(a);
  free(b);
  napi_value out;
  CHECK(env, napi_create_int32(env, err, &out));
  return out;
}

static napi_value set_xattr(napi_env env, napi_callback_info info) {
  void *data[3];
  size_t len[3];
  if (!buffer_args(env, info, 3, data, len, "setXattr(path: Buffer, name: Buffer, value: Buffer)")) return NULL;
  bool path_nul = false, name_nul = false;
  char *path = c_string(data[0], len[0], &path_nul);
  char *name = c_string(data[1], len[1], &name_nul);
  int err = 0;
  if (path_nul || name_nul) err = EINVAL;
  else if (path == NULL || name == NULL) err = ENOMEM;
  else if (lsetxattr(path, name, data[2], len[2], 0) != 0) err = errno;
  free(path);
  free(name);
  napi_value out;
  CHECK(env, napi_create_int32(env, err, &out));
  return out;
}
#endif

#ifdef __linux__
/* writeFiles: a batch of small files created on the pool, so that a layer of many small files
 * (a node_modules) has its system calls made beside the main thread's parsing of the tar, not
 * between it. See the comment at the top for the record layout. */
#define WRITE_RECORD_BYTES 48

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref records_ref;
  const uint8_t *records;
  size_t records_length;
  BufferList contents;
  uint32_t done;
  int error_number;
  int step;
  const char *error;
} WriteFilesJob;

/* The process's libuv (Node's own, which exports it): the version as (major << 16 | minor << 8 | patch). */
extern unsigned int uv_version(void);

/* A time in seconds as the process's libuv gives it to futimens (uv__fs_to_timespec), so that a
 * file made here has the times fs.utimes would give it: nanoseconds from libuv 1.52 (Node 24 on),
 * microseconds before; the fraction of a time before 1970 taken from the second below it. */
static struct timespec seconds_to_timespec(double time) {
  int micro = uv_version() < (1u << 16 | 52u << 8); /* a constant's read: no state shared by the pool's threads */
  struct timespec ts;
  if (time != time) return (struct timespec){0, UTIME_OMIT};
  if (time > 9.2e18 || time < -9.2e18) return (struct timespec){0, UTIME_NOW};
  ts.tv_sec = (time_t)time;
  ts.tv_nsec = (long)((time - (double)ts.tv_sec) * 1e9);
  if (micro) ts.tv_nsec -= ts.tv_nsec % 1000;
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1000000000;
    ts.tv_sec -= 1;
  }
  return ts;
}

/* The records are little-endian, whatever this machine's order (JavaScript writes them so). */
static uint32_t read_le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static double read_le_double(const uint8_t *p) {
  uint64_t bits = (uint64_t)read_le32(p) | (uint64_t)read_le32(p + 4) << 32;
  double value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

/* The rest of making a small file on `fd`, just created: its whole content, then fchown (uid
 * 0xffffffff: none), fchmod (chmod_mode < 0: none; after chown, which clears set-user-ID and
 * set-group-ID), futimens and close. 0, or the errno, with `*step` the call that failed (1 write,
 * 2 fchown, 3 fchmod, 4 futimens, 5 close: writeFiles's numbering). The fd is closed either way. */
static int finish_file(int fd, const uint8_t *content, size_t left, uint32_t uid, uint32_t gid, int32_t chmod_mode, double atime, double mtime, int *step) {
  int failed = 0;
  *step = 1;
  while (left > 0) {
    ssize_t n = write(fd, content, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failed = n < 0 ? errno : EIO;
      break;
    }
    content += n;
    left -= (size_t)n;
  }
  if (!failed && uid != 0xffffffffu) {
    *step = 2;
    if (fchown(fd, (uid_t)uid, (gid_t)gid) != 0) failed = errno;
  }
  if (!failed && chmod_mode >= 0) {
    *step = 3;
    if (fchmod(fd, (mode_t)chmod_mode) != 0) failed = errno;
  }
  if (!failed) {
    struct timespec ts[2] = {seconds_to_timespec(atime), seconds_to_timespec(mtime)};
    *step = 4;
    if (futimens(fd, ts) != 0) failed = errno;
  }
  if (close(fd) != 0 && !failed && errno != EINTR) {
    *step = 5;
    failed = errno;
  }
  return failed;
}

/* A path's bytes as a C string in `out` (PATH_MAX + 1 bytes); 0, or the errno of a path that cannot be one. */
static int c_path(char *out, const uint8_t *bytes, uint32_t length) {
  if (length > PATH_MAX) return ENAMETOOLONG;
  if (memchr(bytes, 0, length) != NULL) return EINVAL;
  memcpy(out, bytes, length);
  out[length] = 0;
  return 0;
}

/* Reads the file at `source` into `content` (`length` bytes: the size it must have). Its errno, or
 * ENODATA where it is shorter and EFBIG where it is longer; 0 when it is whole. */
static int read_source_at(int dir_fd, const char *source, uint8_t *content, size_t length) {
  /* Without touching its access time: a layer store's file keeps its entry's times (often the
   * access time equal to the modification time, which relatime then updates on every first read),
   * and a warm pull of 45,000 files dirtied as many inodes for the disk to write back. O_NOATIME
   * is the owner's (or CAP_FOWNER's): a store another user keeps is read the usual way. */
  int fd = openat(dir_fd, source, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = openat(dir_fd, source, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno;
  int failed = 0;
  size_t got = 0;
  while (got < length) {
    ssize_t n = read(fd, content + got, length - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failed = n < 0 ? errno : ENODATA;
      break;
    }
    got += (size_t)n;
  }
  if (!failed) {
    uint8_t more;
    ssize_t n;
    while ((n = read(fd, &more, 1)) < 0 && errno == EINTR) {
    }
    if (n != 0) failed = n < 0 ? errno : EFBIG;
  }
  close(fd);
  return failed;
}

static void write_files_execute(napi_env env, void *data) {
  (void)env;
  WriteFilesJob *job = data;
  size_t at = 0;
  char path[PATH_MAX + 1];
  char source[PATH_MAX + 1];
  /* The content of a record with a source: read into this, grown to the largest. */
  uint8_t *arena = NULL;
  size_t arena_size = 0;
  uint32_t i = 0, given = 0;
  for (; at < job->records_length; i++) {
    uint32_t fixed[7];
    double times[2];
    if (at + WRITE_RECORD_BYTES > job->records_length) {
      job->error = "writeFiles: records cut short";
      break;
    }
    for (int k = 0; k < 6; k++) fixed[k] = read_le32(job->records + at + 4 * k);
    for (int k = 0; k < 2; k++) times[k] = read_le_double(job->records + at + 24 + 8 * k);
    fixed[6] = read_le32(job->records + at + 40);
    uint32_t path_length = fixed[0], source_length = fixed[5];
    const uint8_t *path_bytes = job->records + at + WRITE_RECORD_BYTES;
    const uint8_t *source_bytes = path_bytes + path_length;
    at += WRITE_RECORD_BYTES + (size_t)path_length + source_length;
    if (at > job->records_length) {
      job->error = "writeFiles: records cut short";
      break;
    }
    job->done = i;
    const uint8_t *content;
    size_t left;
    if (source_length > 0) {
      /* The content is a file's (the layer store's), of the size the record gives. */
      job->step = 6;
      left = fixed[6];
      if (left > arena_size) {
        uint8_t *grown = realloc(arena, left);
        if (grown == NULL) {
          job->error_number = ENOMEM;
          break;
        }
        arena = grown;
        arena_size = left;
      }
      int failed = c_path(source, source_bytes, source_length);
      if (!failed) failed = read_source_at(AT_FDCWD, source, arena, left);
      if (failed) {
        job->error_number = failed;
        break;
      }
      content = arena;
    } else {
      if (given >= job->contents.count) {
        job->error = "writeFiles: fewer contents than records";
        break;
      }
      content = job->contents.data[given];
      left = job->contents.lengths[given++];
    }
    job->step = 0;
    if ((job->error_number = c_path(path, path_bytes, path_length)) != 0) break;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)fixed[1]);
    /* Something of this layer in the way (an earlier entry of the name: a file, a link): replaced,
     * as the applier replaces it. A directory is not (the applier batches no file where it made one). */
    if (fd < 0 && errno == EEXIST) {
      if (unlink(path) == 0 || errno == ENOENT) fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)fixed[1]);
      else errno = EEXIST;
    }
    if (fd < 0) {
      job->error_number = errno;
      break;
    }
    int failed = finish_file(fd, content, left, fixed[3], fixed[4], (int32_t)fixed[2], times[0], times[1], &job->step);
    if (failed) {
      job->error_number = failed;
      break;
    }
  }
  free(arena);
  if (job->error_number == 0 && job->error == NULL) {
    job->done = i;
    job->step = 0;
  }
}

static void write_files_free(napi_env env, WriteFilesJob *job) {
  buffer_list_free(env, &job->contents);
  if (job->records_ref) napi_delete_reference(env, job->records_ref);
  if (job->work) napi_delete_async_work(env, job->work);
  free(job);
}

static void write_files_complete(napi_env env, napi_status status, void *data) {
  WriteFilesJob *job = data;
  napi_value result = NULL, items[3];
  if (status == napi_ok && job->error == NULL && napi_create_array_with_length(env, 3, &result) == napi_ok &&
      napi_create_uint32(env, job->done, &items[0]) == napi_ok && napi_create_int32(env, job->error_number, &items[1]) == napi_ok &&
      napi_create_int32(env, job->step, &items[2]) == napi_ok) {
    for (uint32_t i = 0; i < 3; i++) {
      if (napi_set_element(env, result, i, items[i]) != napi_ok) {
        result = NULL;
        break;
      }
    }
  } else {
    result = NULL;
  }
  settle(env, job->deferred, status, result, job->error, "writeFiles: the work did not run");
  write_files_free(env, job);
}

static napi_value write_files(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool is_buffer = false, is_array = false;
  if (argc < 2 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer || napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array) {
    napi_throw_type_error(env, NULL, "writeFiles(records: Buffer, contents: Buffer[])");
    return NULL;
  }
  WriteFilesJob *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  void *records;
  if (napi_get_buffer_info(env, argv[0], &records, &job->records_length) != napi_ok || napi_create_reference(env, argv[0], 1, &job->records_ref) != napi_ok) {
    write_files_free(env, job);
    napi_throw_error(env, NULL, "writeFiles: could not keep the records");
    return NULL;
  }
  job->records = records;
  if (!buffer_list_take(env, argv[1], &job->contents, "writeFiles: every content must be a Buffer")) {
    write_files_free(env, job);
    return NULL;
  }
  napi_value promise = queue_work(env, "smartlayer.writeFiles", write_files_execute, write_files_complete, job, &job->work, &job->deferred);
  if (promise == NULL) {
    job->work = NULL; /* deleted by queue_work */
    write_files_free(env, job);
    return NULL;
  }
  return promise;
}

/* extractFiles: a run of a layer's small regular files laid down by one call, header decoding
 * included. A layer of many small files (a node_modules) spent most of its main thread's time in
 * JavaScript per entry: the header decoded into an object, the name normalised, the directory
 * looked up, the record encoded (about 11 us a file). In a directory the layer itself made, the
 * files that follow one another need none of that judgement: nothing of a lower layer can be in
 * the way, and the applier has checked the directory. So the applier hands the run to this call
 * and takes over again at the first entry that is anything else.
 *
 * The run takes only what it reads exactly as the applier's reader would (src/tar/stream-reader.ts):
 * a header whose checksum, magic and numeric fields are of the plain form (octal digits, then
 * spaces or NULs), type '0', NUL or '7', named `prefix` + a base name of printable ASCII with no
 * '/', not "." or "..", not a whiteout (".wh."), at most `maxSize` bytes of content, all of it in
 * `chunk`; or a GNU long name ('L'), or pax records of plain form and of the keys path, mtime,
 * atime and ctime only (pax_records), followed at once by such a header. Anything else ends the
 * run before it (the zero blocks of the tar's end, other pax records, global ones, links,
 * directories, another directory's entry, a name already there: EEXIST, any failed call), as
 * does the end of `chunk`. Each file: open(O_CREAT|O_EXCL|O_NOFOLLOW), its content, fchown,
 * fchmod, futimens and close, as writeFiles.
 */
enum { RUN_UMASK, RUN_CHOWN, RUN_CREATOR_UID, RUN_CREATOR_GID, RUN_DIR_SETGID, RUN_MAX_SIZE, RUN_PARAMS, RUN_KEEP_NEXT_FILE = RUN_PARAMS, RUN_KEEP_CHOWN, RUN_KEEP_PARAMS };
enum { RUN_CONSUMED, RUN_COUNT, RUN_BYTES, RUN_LAST, RUN_OUT, RUN_LINES = RUN_OUT, RUN_LINES_FULL, RUN_KEEP_OUT };

/* A numeric field in its plain form: spaces, octal digits, then only spaces or NULs; or all NULs
 * (0). The reader's decoding gives these the same value; false for any other form. */
static bool plain_octal(const uint8_t *field, size_t length, uint64_t *value) {
  size_t i = 0;
  while (i < length && field[i] == ' ') i++;
  size_t nul = i;
  while (nul < length && field[nul] == 0) nul++;
  if (i == 0 && nul == length) {
    *value = 0;
    return true;
  }
  if (i == length || field[i] < '0' || field[i] > '7') return false;
  uint64_t v = 0;
  for (; i < length && field[i] >= '0' && field[i] <= '7'; i++) v = v * 8 + (uint64_t)(field[i] - '0');
  for (; i < length; i++) {
    if (field[i] != 0 && field[i] != ' ') return false;
  }
  *value = v;
  return true;
}

/* A header block the reader reads as it stands: a right checksum, ustar's or GNU's magic. */
static bool plain_header(const uint8_t *h) {
  uint64_t sum = 8 * 0x20, stored;
  for (int i = 0; i < 148; i++) sum += h[i];
  for (int i = 156; i < 512; i++) sum += h[i];
  if (sum == 8 * 0x20 || !plain_octal(h + 148, 8, &stored) || stored != sum) return false;
  if (memcmp(h + 257, "ustar", 5) != 0) return false;
  return h[262] == 0 || (h[262] == ' ' && h[263] == ' ' && h[264] == 0);
}

static size_t field_length(const uint8_t *field, size_t length) {
  const uint8_t *nul = memchr(field, 0, length);
  return nul ? (size_t)(nul - field) : length;
}

static size_t padded(uint64_t size) { return (size_t)((size + 511) & ~(uint64_t)511); }

/* What an entry's pax records give a run: the times, where it has them, and the records in their
 * order (for the layer store's index line of a kept layer). */
typedef struct {
  bool has_mtime, has_atime;
  double mtime, atime;
  int count;
  struct {
    const char *key;
    const uint8_t *value;
    size_t length;
  } records[4];
} PaxTimes;

/* A pax time in the plain form: decimal digits, perhaps a fraction; not negative (Node's futimes
 * takes a negative time for now). Read as JavaScript's Number() reads it: the nearest double. */
static bool pax_time(const uint8_t *value, size_t length, double *out) {
  char text[64];
  size_t dots = 0, digits = 0;
  if (length == 0 || length >= sizeof text) return false;
  for (size_t i = 0; i < length; i++) {
    if (value[i] == '.') dots++;
    else if (value[i] >= '0' && value[i] <= '9') digits++;
    else return false;
  }
  if (dots > 1 || digits == 0 || value[0] == '.' || value[length - 1] == '.') return false;
  memcpy(text, value, length);
  text[length] = 0;
  *out = strtod(text, NULL);
  return *out <= 9e18;
}

/* The records of a pax header, when they are all of the plain form and of keys a run can take
 * (path, mtime, atime, ctime; each once, none empty): the name and times for the entry after it. */
static bool pax_records(const uint8_t *data, size_t size, const uint8_t **name, size_t *name_length, PaxTimes *times) {
  size_t at = 0;
  bool seen_path = false, seen_ctime = false;
  while (at < size) {
    size_t length = 0, i = at;
    while (i < size && data[i] >= '0' && data[i] <= '9' && length < 100000) length = length * 10 + (size_t)(data[i++] - '0');
    if (i == at || i >= size || data[i] != ' ' || length == 0 || at + length > size || data[at + length - 1] != '\n') return false;
    const uint8_t *key = data + i + 1, *end = data + at + length - 1;
    const uint8_t *eq = memchr(key, '=', (size_t)(end - key));
    if (eq == NULL || eq == key || eq + 1 == end || memchr(key, 0, (size_t)(end - key)) != NULL) return false;
    size_t key_length = (size_t)(eq - key), value_length = (size_t)(end - eq - 1);
    const uint8_t *value = eq + 1;
    const char *known;
    if (key_length == 4 && memcmp(key, "path", 4) == 0 && !seen_path) {
      seen_path = true;
      *name = value;
      *name_length = value_length;
      known = "path";
    } else if (key_length == 5 && memcmp(key, "mtime", 5) == 0 && !times->has_mtime) {
      if (!pax_time(value, value_length, &times->mtime)) return false;
      times->has_mtime = true;
      known = "mtime";
    } else if (key_length == 5 && memcmp(key, "atime", 5) == 0 && !times->has_atime) {
      if (!pax_time(value, value_length, &times->atime)) return false;
      times->has_atime = true;
      known = "atime";
    } else if (key_length == 5 && memcmp(key, "ctime", 5) == 0 && !seen_ctime) {
      seen_ctime = true; /* not set by anyone */
      known = "ctime";
    } else {
      return false;
    }
    /* Each key once: at most four. */
    times->records[times->count].key = known;
    times->records[times->count].value = value;
    times->records[times->count].length = value_length;
    times->count++;
    at += length;
  }
  return true;
}

/* An entry's mode, owner and times as a run gives them to its file (and to the layer store's copy). */
typedef struct {
  uint64_t mode, uid, gid, header_mtime;
  double atime, mtime;
} RunMeta;

static bool run_meta(const uint8_t *h, const PaxTimes *times, RunMeta *m) {
  if (!plain_octal(h + 100, 8, &m->mode) || !plain_octal(h + 108, 8, &m->uid) || !plain_octal(h + 116, 8, &m->gid) || !plain_octal(h + 136, 12, &m->header_mtime)) return false;
  /* A pax record's time first; the access time is the modification time where none is given. */
  m->mtime = times->has_mtime ? times->mtime : (double)m->header_mtime;
  m->atime = times->has_atime ? times->atime : m->mtime;
  return true;
}

/* Makes the file of `content` at `path` (relative to `dir_fd`, or AT_FDCWD); false when anything
 * failed or something is at the name: the applier then takes the entry over, and says what went
 * wrong. */
static bool extract_one(int dir_fd, const char *path, const uint8_t *content, uint64_t size, const int32_t *params, const RunMeta *m) {
  mode_t file_mode = (mode_t)(m->mode & 07777);
  int32_t umask_bits = params[RUN_UMASK];
  bool created_with_mode = umask_bits >= 0 && (file_mode & 07000) == 0 && (file_mode & (mode_t)umask_bits) == 0;
  int fd = openat(dir_fd, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, created_with_mode ? file_mode : 0600);
  if (fd < 0) return false;
  bool created_as = m->uid == (uint32_t)params[RUN_CREATOR_UID] && m->gid == (uint32_t)params[RUN_CREATOR_GID] && !params[RUN_DIR_SETGID];
  bool chown = params[RUN_CHOWN] && !created_as;
  int step;
  return finish_file(fd, content, (size_t)size, chown ? (uint32_t)m->uid : 0xffffffffu, (uint32_t)m->gid, created_with_mode ? -1 : (int32_t)file_mode, m->atime, m->mtime, &step) == 0;
}

/* A kept layer (a bundle's pull, --keep-layers): the run also fills the layer store's copy of the
 * layer (src/cache/layer-store.ts, LayerFill), as the applier's own path would: each file's copy
 * under its number, and each entry's line of the index, the JSON LayerFill.add writes, byte for
 * byte. Without it, a kept layer's entries each went through the applier, about 11 us of
 * JavaScript a file, and a layer of 45,000 small files pulled into a bundle took twice a rootfs's
 * time. */
typedef struct {
  /* The store's files directory (with its '/'), then the number of the file being made. */
  char path[PATH_MAX + 1];
  size_t dir_length;
  /* The run's prefix of names as JSON text (without quotes): JavaScript escaped it. */
  const uint8_t *name_json;
  size_t name_json_length;
  uint8_t *lines;
  size_t lines_capacity, lines_length;
  /* Where chunk[start] is in the tar: a header's byteOffset is counted from the tar's start. */
  uint64_t offset;
  uint32_t next_file;
  /* The store gives its copies the entry's owner (root, every id mapped: storedMeta). */
  bool chown;
} RunKeep;

/* Text written into a fixed buffer; `full` once something did not fit (nothing more is written). */
typedef struct {
  uint8_t *data;
  size_t length, capacity;
  bool full;
} LineText;

static void text_bytes(LineText *t, const void *bytes, size_t n) {
  if (t->full || n > t->capacity - t->length) {
    t->full = true;
    return;
  }
  memcpy(t->data + t->length, bytes, n);
  t->length += n;
}

static void text_str(LineText *t, const char *s) { text_bytes(t, s, strlen(s)); }

static void text_u64(LineText *t, uint64_t v) {
  char digits[24];
  int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)v);
  text_bytes(t, digits, (size_t)n);
}

/* Whether JSON.stringify writes these bytes as they are, but for '"' and '\' (escaped): printable ASCII. */
static bool printable_ascii(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] < 0x20 || s[i] >= 0x7f) return false;
  }
  return true;
}

/* Printable ASCII as JSON.stringify writes it inside its quotes. */
static void text_json(LineText *t, const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '"' || s[i] == '\\') text_bytes(t, "\\", 1);
    text_bytes(t, s + i, 1);
  }
}

static void text_name(LineText *t, const RunKeep *keep, const uint8_t *base, size_t base_length) {
  text_bytes(t, "\"", 1);
  text_bytes(t, keep->name_json, keep->name_json_length);
  text_json(t, base, base_length);
  text_bytes(t, "\"", 1);
}

/* The entry's line of the store's index, as LayerFill.add writes it for the header the reader
 * decodes (src/tar/stream-reader.ts): written at the end of keep->lines, not yet counted there.
 * False when the reader would decode a field otherwise than it is written here (a link name on a
 * regular file, an owner's name that is not printable ASCII, device numbers or a ctime not in the
 * plain form): the applier then takes the entry, as it does all a run leaves. */
static bool index_line(RunKeep *keep, LineText *t, const uint8_t *h, const uint8_t *base, size_t base_length, const PaxTimes *pax, const RunMeta *m, uint64_t byte_offset, uint64_t size) {
  uint64_t devmajor, devminor;
  size_t uname_length = field_length(h + 265, 32), gname_length = field_length(h + 297, 32);
  if (h[157] != 0 || !printable_ascii(h + 265, uname_length) || !printable_ascii(h + 297, gname_length) || !plain_octal(h + 329, 8, &devmajor) || !plain_octal(h + 337, 8, &devminor))
    return false;
  for (int i = 0; i < pax->count; i++) {
    double unused;
    if (strcmp(pax->records[i].key, "ctime") == 0 && !pax_time(pax->records[i].value, pax->records[i].length, &unused)) return false;
  }
  text_str(t, "{\"name\":");
  text_name(t, keep, base, base_length);
  text_str(t, ",\"mode\":");
  text_u64(t, m->mode);
  text_str(t, ",\"uid\":");
  text_u64(t, m->uid);
  text_str(t, ",\"gid\":");
  text_u64(t, m->gid);
  text_str(t, ",\"size\":");
  text_u64(t, size);
  text_str(t, ",\"byteOffset\":");
  text_u64(t, byte_offset);
  text_str(t, ",\"mtime\":");
  text_u64(t, m->header_mtime * 1000);
  text_str(t, h[156] == '7' ? ",\"type\":\"contiguous-file\"" : ",\"type\":\"file\"");
  text_str(t, ",\"linkname\":null,\"uname\":\"");
  text_json(t, h + 265, uname_length);
  text_str(t, "\",\"gname\":\"");
  text_json(t, h + 297, gname_length);
  text_str(t, "\",\"devmajor\":");
  text_u64(t, devmajor);
  text_str(t, ",\"devminor\":");
  text_u64(t, devminor);
  if (pax->count == 0) {
    text_str(t, ",\"pax\":null");
  } else {
    text_str(t, ",\"pax\":{");
    for (int i = 0; i < pax->count; i++) {
      text_str(t, i == 0 ? "\"" : ",\"");
      text_str(t, pax->records[i].key);
      text_str(t, "\":");
      /* The path record is the entry's name; the times are digits and a dot. */
      if (strcmp(pax->records[i].key, "path") == 0) {
        text_name(t, keep, base, base_length);
      } else {
        text_bytes(t, "\"", 1);
        text_bytes(t, pax->records[i].value, pax->records[i].length);
        text_bytes(t, "\"", 1);
      }
    }
    text_str(t, "}");
  }
  text_str(t, ",\"file\":\"");
  text_u64(t, keep->next_file);
  text_str(t, "\"}\n");
  return true;
}

/* The layer store's copy of a run's file, as LayerFill.keepContent makes it: created 0600, then the
 * entry's owner (where the store takes it), mode and times. False when anything failed; nothing
 * is left at its name then. */
static bool keep_one(RunKeep *keep, const uint8_t *h, uint64_t size, const RunMeta *m) {
  int n = snprintf(keep->path + keep->dir_length, sizeof keep->path - keep->dir_length, "%u", keep->next_file);
  if (n < 0 || (size_t)n >= sizeof keep->path - keep->dir_length) return false;
  int fd = open(keep->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  int step;
  if (finish_file(fd, h + 512, (size_t)size, keep->chown ? (uint32_t)m->uid : 0xffffffffu, (uint32_t)m->gid, (int32_t)(m->mode & 07777), m->atime, m->mtime, &step) == 0) return true;
  unlink(keep->path);
  return false;
}

static napi_value extract_files(napi_env env, napi_callback_info info) {
  size_t argc = 10;
  napi_value argv[10];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint8_t *chunk, *dir, *prefix;
  size_t chunk_length, dir_length, prefix_length, params_length, out_length;
  uint32_t start;
  napi_typedarray_type params_type, out_type;
  void *params_data, *out_data;
  if (argc < 6 || napi_get_buffer_info(env, argv[0], (void **)&chunk, &chunk_length) != napi_ok || napi_get_value_uint32(env, argv[1], &start) != napi_ok ||
      napi_get_buffer_info(env, argv[2], (void **)&dir, &dir_length) != napi_ok || napi_get_buffer_info(env, argv[3], (void **)&prefix, &prefix_length) != napi_ok ||
      napi_get_typedarray_info(env, argv[4], &params_type, &params_length, &params_data, NULL, NULL) != napi_ok ||
      napi_get_typedarray_info(env, argv[5], &out_type, &out_length, &out_data, NULL, NULL) != napi_ok || params_type != napi_int32_array ||
      out_type != napi_int32_array || params_length < RUN_PARAMS || out_length < RUN_OUT || start > chunk_length || chunk_length > INT32_MAX ||
      prefix_length == 0 || dir_length == 0 || dir_length >= PATH_MAX) {
    napi_throw_type_error(env, NULL, "extractFiles(chunk: Buffer, start: number, dir: Buffer, prefix: Buffer, params: Int32Array, out: Int32Array[, files: Buffer, name: Buffer, lines: Buffer, offset: number])");
    return NULL;
  }
  /* A kept layer: the store's files directory, the prefix as JSON text, the lines' buffer, the tar's offset of chunk[start]. */
  RunKeep keep_state, *keep = NULL;
  if (argc >= 10) {
    uint8_t *files, *name_json, *lines;
    size_t files_length, name_json_length, lines_capacity;
    int64_t offset;
    if (napi_get_buffer_info(env, argv[6], (void **)&files, &files_length) != napi_ok || napi_get_buffer_info(env, argv[7], (void **)&name_json, &name_json_length) != napi_ok ||
        napi_get_buffer_info(env, argv[8], (void **)&lines, &lines_capacity) != napi_ok || napi_get_value_int64(env, argv[9], &offset) != napi_ok || offset < 0 ||
        lines_capacity > INT32_MAX || params_length < RUN_KEEP_PARAMS || out_length < RUN_KEEP_OUT || files_length == 0 || files_length + 12 > PATH_MAX || memchr(files, 0, files_length) != NULL ||
        ((int32_t *)params_data)[RUN_KEEP_NEXT_FILE] < 0) {
      napi_throw_type_error(env, NULL, "extractFiles: a kept layer's files: Buffer, name: Buffer, lines: Buffer, offset: number, and params and out of the kept length");
      return NULL;
    }
    keep = &keep_state;
    memcpy(keep->path, files, files_length);
    keep->dir_length = files_length;
    keep->name_json = name_json;
    keep->name_json_length = name_json_length;
    keep->lines = lines;
    keep->lines_capacity = lines_capacity;
    keep->lines_length = 0;
    keep->offset = (uint64_t)offset;
    keep->next_file = (uint32_t)((int32_t *)params_data)[RUN_KEEP_NEXT_FILE];
    keep->chown = ((int32_t *)params_data)[RUN_KEEP_CHOWN] != 0;
  }
  const int32_t *params = params_data;
  int32_t *out = out_data;
  if (keep) out[RUN_LINES_FULL] = 0;
  char path[PATH_MAX + 1];
  uint8_t joined[PATH_MAX + 1];
  memcpy(path, dir, dir_length);
  size_t entry = start;
  uint64_t total = 0;
  int32_t count = 0, last = -1;
  while (entry + 512 <= chunk_length && plain_header(chunk + entry)) {
    const uint8_t *h = chunk + entry;
    const uint8_t *name = NULL;
    size_t name_length = 0;
    PaxTimes times = {0};
    if (h[156] == 'x') {
      /* pax records, then at once the header they are for: its name is the path record's, if any. */
      uint64_t pax_size;
      if (!plain_octal(h + 124, 12, &pax_size) || pax_size == 0 || pax_size > 8192) break;
      size_t after = entry + 512 + padded(pax_size);
      if (after + 512 > chunk_length || !pax_records(h + 512, (size_t)pax_size, &name, &name_length, &times)) break;
      h = chunk + after;
      if (!plain_header(h)) break;
      if (name == NULL) {
        if (h[262] == 0 && h[345] != 0) break; /* a prefix as well: left to the reader */
        name = h;
        name_length = field_length(h, 100);
      }
    } else if (h[156] == 'L') {
      /* A GNU long name, then at once the header it names. */
      uint64_t long_size;
      if (!plain_octal(h + 124, 12, &long_size) || long_size == 0 || long_size > PATH_MAX) break;
      size_t after = entry + 512 + padded(long_size);
      if (after + 512 > chunk_length) break;
      name = h + 512;
      name_length = field_length(name, (size_t)long_size);
      h = chunk + after;
      if (name_length == 0 || !plain_header(h)) break;
    } else if (h[262] == 0 && h[345] != 0) {
      /* ustar: the prefix field, a '/', the name field. */
      size_t p = field_length(h + 345, 155), n = field_length(h, 100);
      memcpy(joined, h + 345, p);
      joined[p] = '/';
      memcpy(joined + p + 1, h, n);
      name = joined;
      name_length = p + 1 + n;
    } else {
      name = h;
      name_length = field_length(h, 100);
    }
    uint64_t size;
    if (!(h[156] == '0' || h[156] == 0 || h[156] == '7') || !plain_octal(h + 124, 12, &size) || size > (uint64_t)params[RUN_MAX_SIZE]) break;
    if (name_length <= prefix_length || memcmp(name, prefix, prefix_length) != 0) break;
    const uint8_t *base = name + prefix_length;
    size_t base_length = name_length - prefix_length;
    bool simple = !(base_length == 1 && base[0] == '.') && !(base_length == 2 && base[0] == '.' && base[1] == '.') &&
                  !(base_length >= 4 && memcmp(base, ".wh.", 4) == 0) && dir_length + base_length <= PATH_MAX;
    for (size_t i = 0; simple && i < base_length; i++) simple = base[i] >= 0x20 && base[i] < 0x7f && base[i] != '/';
    size_t next = (size_t)(h - chunk) + 512 + padded(size);
    if (!simple || next > chunk_length) break;
    RunMeta meta;
    if (!run_meta(h, &times, &meta)) break;
    /* A kept layer's index line first: an entry it cannot give is left to the applier before anything is made. */
    LineText line = {0};
    if (keep) {
      line = (LineText){keep->lines + keep->lines_length, 0, keep->lines_capacity - keep->lines_length, false};
      uint64_t byte_offset = keep->offset + (uint64_t)((size_t)(h - chunk) - start) + 512;
      if (!index_line(keep, &line, h, base, base_length, &times, &meta, byte_offset, size)) break;
      if (line.full) {
        out[RUN_LINES_FULL] = 1;
        break;
      }
    }
    memcpy(path + dir_length, base, base_length);
    path[dir_length + base_length] = 0;
    if (!extract_one(AT_FDCWD, path, h + 512, size, params, &meta)) break;
    if (keep) {
      /* The tree's file is this run's own (O_EXCL): taken back when its copy fails, so that the applier makes both, or says why. */
      if (!keep_one(keep, h, size, &meta)) {
        unlink(path);
        break;
      }
      keep->lines_length += line.length;
      keep->next_file++;
    }
    last = (int32_t)entry;
    entry = next;
    count++;
    total += size;
  }
  out[RUN_CONSUMED] = (int32_t)(entry - start);
  out[RUN_COUNT] = count;
  out[RUN_BYTES] = (int32_t)total;
  out[RUN_LAST] = last;
  if (keep) out[RUN_LINES] = (int32_t)keep->lines_length;
  return NULL;
}

/* copyStoredFiles: extractFiles's run for a layer laid from the layer store (a warm pull). The
 * store keeps each entry as a line of its index (LayerFill.add's JSON) and each regular file's
 * content as a numbered file; the applier parsed each line, normalised and judged it, then read
 * the numbered file and wrote the tree's, about 8 us of JavaScript a file: a layer of 45,000 small
 * files took longer from the store (0.71 s) than from its compressed blob (0.64 s). The lines that
 * follow one another in a directory the layer made need none of that judgement, as in a run.
 *
 * A line is taken only in the form LayerFill.add writes for such a file, key by key: a name of
 * `prefix` (as JSON text) + a base name of printable ASCII (JSON's \" and \\ the only escapes),
 * with no '/', not "." or "..", not a whiteout; type "file" or "contiguous-file", no link name;
 * pax null or of the keys path, mtime, atime and ctime only, their values plain (pax_records's
 * rule); at most `maxSize` bytes; owner ids below 2^32 - 1; the whole line (its newline too) in
 * `text`. Anything else ends the run before that line, as does a store file that cannot be read
 * or is not of the size its line gives (read before anything is made), and a failed or refused
 * creation: the applier takes that line and says what is wrong. */
typedef struct {
  const uint8_t *at, *end;
} LineCursor;

static bool line_literal(LineCursor *c, const char *literal) {
  size_t n = strlen(literal);
  if ((size_t)(c->end - c->at) < n || memcmp(c->at, literal, n) != 0) return false;
  c->at += n;
  return true;
}

/* A JSON number of digits only (no sign, fraction, exponent, or leading zero), below 2^53. */
static bool line_uint(LineCursor *c, uint64_t *value) {
  const uint8_t *start = c->at;
  uint64_t v = 0;
  while (c->at < c->end && *c->at >= '0' && *c->at <= '9' && c->at - start < 16) v = v * 10 + (uint64_t)(*c->at++ - '0');
  if (c->at == start || (c->at - start > 1 && *start == '0') || (c->at < c->end && *c->at >= '0' && *c->at <= '9') || v >= (1ULL << 53)) return false;
  *value = v;
  return true;
}

/* A JSON string of printable ASCII whose only escapes are \" and \\: its text between the quotes,
 * as it stands (escapes included). */
static bool line_string(LineCursor *c, const uint8_t **text, size_t *length) {
  if (c->at >= c->end || *c->at != '"') return false;
  const uint8_t *start = ++c->at;
  while (c->at < c->end && *c->at != '"') {
    if (*c->at < 0x20 || *c->at >= 0x7f) return false;
    if (*c->at == '\\') {
      if (c->at + 1 >= c->end || (c->at[1] != '"' && c->at[1] != '\\')) return false;
      c->at++;
    }
    c->at++;
  }
  if (c->at >= c->end) return false;
  *text = start;
  *length = (size_t)(c->at - start);
  c->at++;
  return true;
}

/* The pax member of a line: null, or an object of plain path, mtime, atime and ctime records. */
static bool line_pax(LineCursor *c, PaxTimes *times) {
  if (line_literal(c, "null")) return true;
  if (!line_literal(c, "{")) return false;
  bool seen_path = false, seen_ctime = false;
  for (int i = 0; !line_literal(c, "}"); i++) {
    if (i > 0 && !line_literal(c, ",")) return false;
    const uint8_t *key, *value;
    size_t key_length, value_length;
    if (!line_string(c, &key, &key_length) || !line_literal(c, ":") || !line_string(c, &value, &value_length)) return false;
    if (key_length == 4 && memcmp(key, "path", 4) == 0 && !seen_path) {
      seen_path = true; /* the entry's name, which the line's name gives */
    } else if (key_length == 5 && memcmp(key, "mtime", 5) == 0 && !times->has_mtime) {
      if (!pax_time(value, value_length, &times->mtime)) return false;
      times->has_mtime = true;
    } else if (key_length == 5 && memcmp(key, "atime", 5) == 0 && !times->has_atime) {
      if (!pax_time(value, value_length, &times->atime)) return false;
      times->has_atime = true;
    } else if (key_length == 5 && memcmp(key, "ctime", 5) == 0 && !seen_ctime) {
      seen_ctime = true; /* not set by anyone */
    } else {
      return false;
    }
  }
  return true;
}

/* One index line (without its newline) as copyStoredFiles takes it: the base name after `prefix`
 * (unescaped into `base`), the store's file number, the size and what the file is given. */
static bool stored_line(LineCursor *c, const uint8_t *prefix, size_t prefix_length, char *base, size_t *base_length, const uint8_t **file, size_t *file_length,
                        uint64_t *size, RunMeta *m) {
  const uint8_t *name, *skipped;
  size_t name_length, skipped_length;
  uint64_t header_ms, ignored;
  PaxTimes times = {0};
  if (!line_literal(c, "{\"name\":") || !line_string(c, &name, &name_length) || !line_literal(c, ",\"mode\":") || !line_uint(c, &m->mode) ||
      !line_literal(c, ",\"uid\":") || !line_uint(c, &m->uid) || !line_literal(c, ",\"gid\":") || !line_uint(c, &m->gid) || !line_literal(c, ",\"size\":") ||
      !line_uint(c, size) || !line_literal(c, ",\"byteOffset\":") || !line_uint(c, &ignored) || !line_literal(c, ",\"mtime\":") || !line_uint(c, &header_ms) ||
      !line_literal(c, ",\"type\":\""))
    return false;
  if (!line_literal(c, "file\"") && !line_literal(c, "contiguous-file\"")) return false;
  if (!line_literal(c, ",\"linkname\":null,\"uname\":") || !line_string(c, &skipped, &skipped_length) || !line_literal(c, ",\"gname\":") ||
      !line_string(c, &skipped, &skipped_length) || !line_literal(c, ",\"devmajor\":") || !line_uint(c, &ignored) || !line_literal(c, ",\"devminor\":") ||
      !line_uint(c, &ignored) || !line_literal(c, ",\"pax\":") || !line_pax(c, &times) || !line_literal(c, ",\"file\":") || !line_string(c, file, file_length) ||
      !line_literal(c, "}") || c->at != c->end)
    return false;
  if (*file_length == 0 || *file_length > 10) return false;
  for (size_t i = 0; i < *file_length; i++) {
    if ((*file)[i] < '0' || (*file)[i] > '9') return false;
  }
  /* Owner ids as the applier takes them (0xffffffff is chown's "unchanged"); a time of whole seconds. */
  if (m->uid >= 0xffffffffu || m->gid >= 0xffffffffu || (!times.has_mtime && header_ms % 1000 != 0)) return false;
  if (name_length <= prefix_length || memcmp(name, prefix, prefix_length) != 0) return false;
  size_t n = 0;
  for (const uint8_t *p = name + prefix_length; p < name + name_length; p++) {
    if (*p == '\\') p++;
    if (*p == '/' || n >= NAME_MAX) return false;
    base[n++] = (char)*p;
  }
  base[n] = 0;
  *base_length = n;
  if ((n == 1 && base[0] == '.') || (n == 2 && base[0] == '.' && base[1] == '.') || (n >= 4 && memcmp(base, ".wh.", 4) == 0)) return false;
  m->header_mtime = header_ms / 1000;
  m->mtime = times.has_mtime ? times.mtime : (double)m->header_mtime;
  m->atime = times.has_atime ? times.atime : m->mtime;
  return true;
}

static napi_value copy_stored_files(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint8_t *text, *files, *dir, *prefix;
  size_t text_length, files_length, dir_length, prefix_length, params_length, out_length;
  uint32_t start;
  napi_typedarray_type params_type, out_type;
  void *params_data, *out_data;
  if (argc < 7 || napi_get_buffer_info(env, argv[0], (void **)&text, &text_length) != napi_ok || napi_get_value_uint32(env, argv[1], &start) != napi_ok ||
      napi_get_buffer_info(env, argv[2], (void **)&files, &files_length) != napi_ok || napi_get_buffer_info(env, argv[3], (void **)&dir, &dir_length) != napi_ok ||
      napi_get_buffer_info(env, argv[4], (void **)&prefix, &prefix_length) != napi_ok ||
      napi_get_typedarray_info(env, argv[5], &params_type, &params_length, &params_data, NULL, NULL) != napi_ok ||
      napi_get_typedarray_info(env, argv[6], &out_type, &out_length, &out_data, NULL, NULL) != napi_ok || params_type != napi_int32_array || out_type != napi_int32_array ||
      params_length < RUN_PARAMS || out_length < RUN_OUT || start > text_length || text_length > INT32_MAX || prefix_length == 0 || dir_length == 0 ||
      dir_length >= PATH_MAX || files_length == 0 || files_length >= PATH_MAX || memchr(files, 0, files_length) != NULL || memchr(dir, 0, dir_length) != NULL ||
      ((int32_t *)params_data)[RUN_MAX_SIZE] < 0) {
    napi_throw_type_error(env, NULL, "copyStoredFiles(text: Buffer, start: number, files: Buffer, dir: Buffer, prefix: Buffer, params: Int32Array, out: Int32Array)");
    return NULL;
  }
  const int32_t *params = params_data;
  int32_t *out = out_data;
  /* Both directories opened once, the names then looked up in them: the store's paths are long,
   * and their lookups were a fifth of the run's time. */
  char name[NAME_MAX + 1], source[16];
  char dir_path[PATH_MAX + 1];
  memcpy(dir_path, dir, dir_length);
  dir_path[dir_length] = 0;
  int dir_fd = open(dir_path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  memcpy(dir_path, files, files_length);
  dir_path[files_length] = 0;
  int files_fd = open(dir_path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  /* Every content is read into this, the largest a run takes. */
  uint8_t *content = malloc(params[RUN_MAX_SIZE] > 0 ? (size_t)params[RUN_MAX_SIZE] : 1);
  size_t line = start;
  uint64_t total = 0;
  int32_t count = 0;
  while (content != NULL && dir_fd >= 0 && files_fd >= 0 && line < text_length) {
    const uint8_t *newline = memchr(text + line, '\n', text_length - line);
    if (newline == NULL) break;
    LineCursor c = {text + line, newline};
    const uint8_t *file;
    size_t base_length, file_length;
    uint64_t size;
    RunMeta meta;
    if (!stored_line(&c, prefix, prefix_length, name, &base_length, &file, &file_length, &size, &meta) || size > (uint64_t)params[RUN_MAX_SIZE]) break;
    memcpy(source, file, file_length);
    source[file_length] = 0;
    /* The store's file read whole first: one missing or of another size is left to the applier, with nothing made. */
    if (read_source_at(files_fd, source, content, (size_t)size) != 0) break;
    if (!extract_one(dir_fd, name, content, size, params, &meta)) break;
    line = (size_t)(newline - text) + 1;
    count++;
    total += size;
  }
  free(content);
  if (dir_fd >= 0) close(dir_fd);
  if (files_fd >= 0) close(files_fd);
  out[RUN_CONSUMED] = (int32_t)(line - start);
  out[RUN_COUNT] = count;
  out[RUN_BYTES] = (int32_t)total;
  out[RUN_LAST] = -1;
  return NULL;
}
#endif

#ifdef __GLIBC__
/* heapRetain(topPad): glibc's malloc keeps `topPad` bytes at the top of each heap instead of
 * giving every freed block back to the kernel at once. Set once a push starts compressing gzip
 * blocks: each block's output was written into pages just given back, a fault per 4 KiB taken
 * again, and faults are dear on virtual machines. Setting it stops glibc's own adjusting of the
 * size from which a block gets a mapping of its own, so that is set to the ceiling the adjusting
 * reaches (32 MiB): blocks stay on the heap as they did. */
static napi_value heap_retain(napi_env env, napi_callback_info info) {
  int32_t pad = 0;
  if (!size_arg(env, info, "heapRetain(topPad: number)", &pad)) return NULL;
  bool ok = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1 && mallopt(M_TOP_PAD, pad) == 1;
  napi_value result;
  CHECK(env, napi_get_boolean(env, ok, &result));
  return result;
}
#endif

static napi_value export_function(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  CHECK(env, napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, name, fn));
  return exports;
}

static napi_value export_string(napi_env env, napi_value exports, const char *name, const char *value) {
  napi_value v;
  CHECK(env, napi_create_string_utf8(env, value, NAPI_AUTO_LENGTH, &v));
  CHECK(env, napi_set_named_property(env, exports, name, v));
  return exports;
}

static napi_value init(napi_env env, napi_value exports) {
#ifdef __GLIBC__
  if (!export_function(env, exports, "heapRetain", heap_retain)) return NULL;
#endif
#ifdef __linux__
  if (!export_function(env, exports, "makePipe", make_pipe)) return NULL;
  if (!export_function(env, exports, "setXattr", set_xattr)) return NULL;
  if (!export_function(env, exports, "exchangePaths", exchange_paths)) return NULL;
  if (!export_function(env, exports, "writeFiles", write_files)) return NULL;
  if (!export_function(env, exports, "extractFiles", extract_files)) return NULL;
  if (!export_function(env, exports, "copyStoredFiles", copy_stored_files)) return NULL;
  {
    /* The record size writeFiles reads: JavaScript of another version uses it only if it is its own. */
    napi_value record_bytes;
    CHECK(env, napi_create_uint32(env, WRITE_RECORD_BYTES, &record_bytes));
    CHECK(env, napi_set_named_property(env, exports, "writeFilesRecordBytes", record_bytes));
    /* extractFiles fills a kept layer's store too (its last four arguments): an addon without this ignores them. */
    napi_value keeps;
    CHECK(env, napi_get_boolean(env, true, &keeps));
    CHECK(env, napi_set_named_property(env, exports, "extractFilesKeeps", keeps));
  }
  if (evp_load()) {
    if (!export_function(env, exports, "sha256Create", sha256_create)) return NULL;
    if (!export_function(env, exports, "sha256Update", sha256_update)) return NULL;
    if (!export_function(env, exports, "sha256Digest", sha256_digest)) return NULL;
    if (!export_function(env, exports, "sha256File", sha256_file)) return NULL;
#ifdef SMART_HAVE_ISAL
    if (!export_function(env, exports, "gunzipCreate", gunzip_create)) return NULL;
    if (!export_function(env, exports, "gunzipRun", gunzip_run)) return NULL;
#endif
  }
#endif
#ifdef SMART_HAVE_LIBDEFLATE
  if (!export_function(env, exports, "gzipMember", gzip_member)) return NULL;
  if (!export_string(env, exports, "libdeflateVersion", LIBDEFLATE_VERSION_STRING)) return NULL;
#endif
#ifdef SMART_HAVE_ISAL
  if (!export_function(env, exports, "igzipMember", igzip_member)) return NULL;
#define SMART_STR2(x) #x
#define SMART_STR(x) SMART_STR2(x)
  if (!export_string(env, exports, "isalVersion", SMART_STR(ISAL_MAJOR_VERSION) "." SMART_STR(ISAL_MINOR_VERSION) "." SMART_STR(ISAL_PATCH_VERSION))) return NULL;
#endif
#ifdef SMART_HAVE_ZSTD
  if (!export_function(env, exports, "zstdCreate", zstd_create)) return NULL;
  if (!export_function(env, exports, "zstdCompress", zstd_compress)) return NULL;
  if (!export_function(env, exports, "zstdFree", zstd_free)) return NULL;
  if (!export_string(env, exports, "zstdVersion", ZSTD_versionString())) return NULL;
#endif
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
