/* wire.c - Envelope frames, CURVE keys and the join document (wire.h). */
#include "common/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

/* ------------------------------------------------------------ join document */

static int s_copy(char *dst, size_t n, const char *src, const char *what, const char *key,
                  DmErr *err)
{
    if (strlen(src) >= n)
        return dm_err(err, "%s: \"%s\" is too long (%zu bytes, at most %zu)", what, key,
                      strlen(src), n - 1);
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

int wire_join_to_json(const WireJoin *j, char **text, DmErr *err)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:f, s:i, s:i}",
                          "endpoint", j->endpoint, "server_public", j->server_public,
                          "client_public", j->client_public, "client_secret", j->client_secret,
                          "job", j->job, "model", j->model, "model_fingerprint",
                          j->model_fingerprint, "stage", j->stage, "max_length", j->max_length,
                          "pdf_dpi", j->pdf_dpi, "threads", j->threads, "heartbeat_seconds",
                          j->heartbeat_seconds, "heartbeat_liveness", j->heartbeat_liveness,
                          "credit", j->credit);
    json_t *temps = json_array();
    for (int i = 0; o && temps && i < j->n_temps; i++)
        json_array_append_new(temps, json_real(j->temps[i]));
    if (o && temps)
        json_object_set_new(o, "top_k", json_integer(j->top_k));
    if (o && temps && j->n_temps > 0) /* none set: the reader's default [1] */
        json_object_set_new(o, "temperatures", temps);
    else
        json_decref(temps);
    if (o)
        json_object_set_new(o, "first_answer_only", json_boolean(j->first_answer_only));
    if (o)
        json_object_set_new(o, "precision", json_string(j->precision ? "bf16" : "fp32"));
    if (o && j->page_timeout_seconds > 0)
        json_object_set_new(o, "page_timeout_seconds", json_real(j->page_timeout_seconds));
    if (o && j->max_page_pixels > 0)
        json_object_set_new(o, "max_page_pixels", json_integer((json_int_t)j->max_page_pixels));
    if (o && j->analyze[0]) {
        json_t *an = json_loads(j->analyze, 0, NULL);
        if (!an) {
            json_decref(o);
            return dm_err(err, "join document: the analyze settings are not JSON");
        }
        json_object_set_new(o, "analyze", an);
    }
    if (!o)
        return dm_err(err, "join document: cannot build JSON (bad UTF-8 in a path?)");
    *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return *text ? 0 : dm_err(err, "out of memory");
}

int wire_key_valid(const char *z85)
{
    uint8_t raw[32];
    if (!z85 || strlen(z85) != WIRE_KEY_CHARS)
        return 0;
    return zmq_z85_decode(raw, z85) != NULL;
}

int wire_join_parse(const char *text, const char *what, WireJoin *j, DmErr *err)
{
    memset(j, 0, sizeof *j);
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!o)
        return dm_err(err, "%s: not JSON (line %d: %s)", what, je.line, je.text);
    static const char *const skeys[] = {"endpoint", "server_public", "client_public",
                                        "client_secret", "job", "model",
                                        "model_fingerprint", "stage"};
    char *const sdst[] = {j->endpoint, j->server_public, j->client_public, j->client_secret,
                          j->job, j->model, j->model_fingerprint, j->stage};
    const size_t slen[] = {sizeof j->endpoint, sizeof j->server_public,
                           sizeof j->client_public, sizeof j->client_secret, sizeof j->job,
                           sizeof j->model, sizeof j->model_fingerprint, sizeof j->stage};
    int rc = -1;
    if (!json_is_object(o)) {
        dm_err(err, "%s: expected a JSON object", what);
        goto done;
    }
    for (int i = 0; i < 8; i++) {
        json_t *v = json_object_get(o, skeys[i]);
        if (!json_is_string(v)) {
            dm_err(err, "%s: \"%s\" missing or not a string", what, skeys[i]);
            goto done;
        }
        if (s_copy(sdst[i], slen[i], json_string_value(v), what, skeys[i], err))
            goto done;
    }
    static const char *const ikeys[] = {"max_length", "pdf_dpi", "threads",
                                        "heartbeat_liveness", "credit"};
    int *const idst[] = {&j->max_length, &j->pdf_dpi, &j->threads, &j->heartbeat_liveness,
                         &j->credit};
    for (int i = 0; i < 5; i++) {
        json_t *v = json_object_get(o, ikeys[i]);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1 << 20) {
            dm_err(err, "%s: \"%s\" missing or not a small non-negative integer", what, ikeys[i]);
            goto done;
        }
        *idst[i] = (int)json_integer_value(v);
    }
    json_t *hb = json_object_get(o, "heartbeat_seconds");
    if (!json_is_number(hb) || json_number_value(hb) <= 0) {
        dm_err(err, "%s: \"heartbeat_seconds\" missing or not a positive number", what);
        goto done;
    }
    j->heartbeat_seconds = json_number_value(hb);
    /* cache-logits settings: optional, so older join files still parse. */
    json_t *tk = json_object_get(o, "top_k"), *ts = json_object_get(o, "temperatures");
    j->top_k = 64;
    j->temps[0] = 1.0;
    j->n_temps = 1;
    if (tk && (!json_is_integer(tk) || json_integer_value(tk) < 0 ||
               json_integer_value(tk) > 1 << 24)) {
        dm_err(err, "%s: \"top_k\" is not a non-negative integer", what);
        goto done;
    }
    if (tk)
        j->top_k = (int)json_integer_value(tk);
    if (ts) {
        if (!json_is_array(ts) || json_array_size(ts) < 1 || json_array_size(ts) > 16) {
            dm_err(err, "%s: \"temperatures\" is not an array of 1 to 16 numbers", what);
            goto done;
        }
        j->n_temps = (int)json_array_size(ts);
        for (int i = 0; i < j->n_temps; i++) {
            json_t *t = json_array_get(ts, (size_t)i);
            if (!json_is_number(t) || json_number_value(t) <= 0) {
                dm_err(err, "%s: \"temperatures\"[%d] is not a positive number", what, i);
                goto done;
            }
            j->temps[i] = json_number_value(t);
        }
    }
    j->first_answer_only = json_is_true(json_object_get(o, "first_answer_only"));
    json_t *mp = json_object_get(o, "max_page_pixels"); /* optional: absent = the default */
    if (mp && (!json_is_integer(mp) || json_integer_value(mp) < 0 ||
               json_integer_value(mp) > ((json_int_t)1 << 28))) {
        dm_err(err, "%s: \"max_page_pixels\" is not an integer from 0 to 2^28", what);
        goto done;
    }
    j->max_page_pixels = mp ? (int64_t)json_integer_value(mp) : 0;
    json_t *pt = json_object_get(o, "page_timeout_seconds"); /* optional: absent = no watchdog */
    if (pt && (!json_is_number(pt) || json_number_value(pt) < 0)) {
        dm_err(err, "%s: \"page_timeout_seconds\" is not a non-negative number", what);
        goto done;
    }
    j->page_timeout_seconds = pt ? json_number_value(pt) : 0;
    json_t *pr = json_object_get(o, "precision"); /* optional: absent = fp32 */
    const char *prs = json_is_string(pr) ? json_string_value(pr) : NULL;
    if (pr && (!prs || (strcmp(prs, "fp32") && strcmp(prs, "bf16")))) {
        dm_err(err, "%s: \"precision\" must be \"fp32\" or \"bf16\"", what);
        goto done;
    }
    j->precision = prs && !strcmp(prs, "bf16");
    json_t *an = json_object_get(o, "analyze"); /* optional */
    j->analyze[0] = '\0';
    if (an) {
        char *t = json_is_object(an) ? json_dumps(an, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        if (!t || strlen(t) >= sizeof j->analyze) {
            free(t);
            dm_err(err, "%s: \"analyze\" is not an object of at most %zu bytes", what,
                   sizeof j->analyze - 1);
            goto done;
        }
        memcpy(j->analyze, t, strlen(t) + 1);
        free(t);
    }
    int no_client = !j->client_public[0] && !j->client_secret[0];
    if (!wire_key_valid(j->server_public) ||
        (!no_client && (!wire_key_valid(j->client_public) || !wire_key_valid(j->client_secret)))) {
        dm_err(err, "%s: a key is not 40 characters of Z85", what);
        goto done;
    }
    if (j->heartbeat_liveness < 1 || j->credit < 1) {
        dm_err(err, "%s: heartbeat_liveness and credit must be at least 1", what);
        goto done;
    }
    rc = 0;
done:
    json_decref(o);
    return rc;
}

int wire_join_write(const char *path, const WireJoin *j, DmErr *err)
{
    char *text = NULL;
    if (wire_join_to_json(j, &text, err))
        return -1;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(text);
        return dm_err_errno(err, "%s", tmp);
    }
    size_t len = strlen(text), off = 0;
    int rc = fchmod(fd, 0600);
    while (rc == 0 && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = -1;
        else
            off += (size_t)w;
    }
    if (rc == 0 && write(fd, "\n", 1) != 1)
        rc = -1;
    if (rc == 0)
        rc = fsync(fd);
    free(text);
    if (close(fd) != 0)
        rc = -1;
    if (rc != 0) {
        dm_err_errno(err, "%s", tmp);
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        dm_err_errno(err, "%s", path);
        unlink(tmp);
        return -1;
    }
    return 0;
}

int wire_join_read(const char *path, WireJoin *j, DmErr *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return dm_err_errno(err, "%s", path);
    char *buf = malloc(65536);
    size_t n = buf ? fread(buf, 1, 65535, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        return dm_err(err, "out of memory");
    if (bad) {
        free(buf);
        return dm_err(err, "%s: read error", path);
    }
    buf[n] = '\0';
    int rc = wire_join_parse(buf, path, j, err);
    free(buf);
    return rc;
}

int wire_keys_generate(WireJoin *j, char server_secret[WIRE_KEY_CHARS + 1], DmErr *err)
{
    if (!zmq_has("curve"))
        return dm_err(err, "this libzmq was built without CURVE security (libsodium)");
    if (zmq_curve_keypair(j->server_public, server_secret) != 0 ||
        zmq_curve_keypair(j->client_public, j->client_secret) != 0)
        return dm_err(err, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
    return 0;
}

int wire_key_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
              (name[i] >= '0' && name[i] <= '9') || strchr("._-", name[i])))
            return 0;
    return 1;
}

int wire_key_file_new(const char *path, const char *name, char public_z85[WIRE_KEY_CHARS + 1],
                      DmErr *err)
{
    char secret[WIRE_KEY_CHARS + 1];
    if (!wire_key_name_valid(name))
        return dm_err(err, "key name \"%s\": 1 to 64 letters, digits, '.', '_' or '-'", name);
    if (!zmq_has("curve"))
        return dm_err(err, "this libzmq was built without CURVE security (libsodium)");
    if (zmq_curve_keypair(public_z85, secret) != 0)
        return dm_err(err, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
    json_t *o = json_pack("{s:s, s:s, s:s}", "name", name, "public", public_z85, "secret", secret);
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    memset(secret, 0, sizeof secret);
    if (!text)
        return dm_err(err, "out of memory");
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(text);
        return dm_err_errno(err, "%s", path);
    }
    size_t len = strlen(text);
    int rc = fchmod(fd, 0600) == 0 && write(fd, text, len) == (ssize_t)len &&
                     write(fd, "\n", 1) == 1 && fsync(fd) == 0
                 ? 0
                 : -1;
    memset(text, 0, len);
    free(text);
    if (close(fd) != 0)
        rc = -1;
    if (rc) {
        dm_err_errno(err, "%s", path);
        unlink(path);
    }
    return rc;
}

int wire_key_file_read(const char *path, char name[65], char public_z85[WIRE_KEY_CHARS + 1],
                       char secret_z85[WIRE_KEY_CHARS + 1], DmErr *err)
{
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o)
        return dm_err(err, "%s: not a key file (line %d: %s)", path, je.line, je.text);
    const char *n = json_string_value(json_object_get(o, "name"));
    const char *pub = json_string_value(json_object_get(o, "public"));
    const char *sec = json_string_value(json_object_get(o, "secret"));
    int rc = -1;
    char derived[WIRE_KEY_CHARS + 1];
    if (!n || !wire_key_name_valid(n))
        dm_err(err, "%s: \"name\" missing or not 1 to 64 of [A-Za-z0-9._-]", path);
    else if (!pub || !sec || !wire_key_valid(pub) || !wire_key_valid(sec))
        dm_err(err, "%s: \"public\" and \"secret\" must be 40 characters of Z85", path);
    else if (zmq_curve_public(derived, sec) != 0 || strcmp(derived, pub) != 0)
        dm_err(err, "%s: the public key is not the secret key's", path);
    else
        rc = 0;
    if (rc == 0) {
        snprintf(name, 65, "%s", n);
        memcpy(public_z85, pub, WIRE_KEY_CHARS + 1);
        memcpy(secret_z85, sec, WIRE_KEY_CHARS + 1);
    }
    json_decref(o);
    return rc;
}

/* ------------------------------------------------------------------ sockets */

int wire_socket_defaults(void *sock, DmErr *err)
{
    int linger = 0;
    int64_t maxmsg = WIRE_MAX_MSG;
    if (zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0)
        return dm_err(err, "zmq_setsockopt: %s", zmq_strerror(zmq_errno()));
    return 0;
}

int wire_pipe(void *zctx, const char *prefix, void **ours, void **theirs, DmErr *err)
{
    char ep[96];
    int linger = 0;
    *ours = zmq_socket(zctx, ZMQ_PAIR);
    *theirs = zmq_socket(zctx, ZMQ_PAIR);
    snprintf(ep, sizeof ep, "inproc://%s-%p", prefix, *ours);
    if (*ours && *theirs && !zmq_setsockopt(*ours, ZMQ_LINGER, &linger, sizeof linger) &&
        !zmq_setsockopt(*theirs, ZMQ_LINGER, &linger, sizeof linger) && !zmq_bind(*ours, ep) &&
        !zmq_connect(*theirs, ep))
        return 0;
    dm_err(err, "inproc pipe %s: %s", ep, zmq_strerror(zmq_errno()));
    if (*ours)
        zmq_close(*ours);
    if (*theirs)
        zmq_close(*theirs);
    *ours = *theirs = NULL;
    return -1;
}

int wire_curve_client(void *sock, const WireJoin *j, DmErr *err)
{
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, j->server_public, WIRE_KEY_CHARS) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, j->client_public, WIRE_KEY_CHARS) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, j->client_secret, WIRE_KEY_CHARS) != 0)
        return dm_err(err, "CURVE client keys: %s", zmq_strerror(zmq_errno()));
    return 0;
}

static void s_free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

int wire_send(void *sock, const void *routing_id, size_t idlen, const Docmint__Envelope *env,
              int flags, DmErr *err)
{
    size_t len = docmint__envelope__get_packed_size(env);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return dm_err(err, "out of memory (%zu-byte message)", len);
    docmint__envelope__pack(env, buf);
    if (routing_id && zmq_send(sock, routing_id, idlen, flags | ZMQ_SNDMORE) < 0) {
        int e = zmq_errno();
        free(buf);
        dm_err(err, "zmq_send: %s", zmq_strerror(e));
        errno = e; /* callers look at zmq_errno() */
        return -1;
    }
    zmq_msg_t m;
    zmq_msg_init_data(&m, buf, len, s_free_buf, NULL);
    if (zmq_msg_send(&m, sock, flags) < 0) {
        /* With the routing frame already queued, a failed body cannot
         * happen for ROUTER (the whole message is checked at the first
         * frame); for DEALER nothing was queued. */
        int e = zmq_errno();
        zmq_msg_close(&m);
        dm_err(err, "zmq_send: %s", zmq_strerror(e));
        errno = e;
        return -1;
    }
    return 0;
}

static int s_recv(void *sock, unsigned char *routing_id, size_t *idlen, char *user, size_t usern,
                  size_t *bytes, Docmint__Envelope **env, int flags, DmErr *err)
{
    *env = NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, flags) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&m);
        if (e == EAGAIN || e == EINTR)
            return 0;
        errno = e;
        return dm_err(err, "zmq_recv: %s", zmq_strerror(e));
    }
    int nframes = 1, bad = 0;
    if (routing_id) {
        size_t n = zmq_msg_size(&m);
        if (n > 255)
            bad = 1;
        else {
            memcpy(routing_id, zmq_msg_data(&m), n);
            *idlen = n;
        }
        if (!zmq_msg_more(&m))
            bad = 1;
        else {
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, sock, 0) < 0) {
                int e = zmq_errno();
                zmq_msg_close(&m);
                return dm_err(err, "zmq_recv: %s", zmq_strerror(e));
            }
            nframes++;
        }
    }
    if (!bad) {
        if (bytes)
            *bytes = zmq_msg_size(&m);
        if (user) {
            const char *u = zmq_msg_gets(&m, "User-Id");
            snprintf(user, usern, "%s", u ? u : "");
        }
        *env = docmint__envelope__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    }
    /* Drain any further frames: a well-formed message has none. */
    while (zmq_msg_more(&m)) {
        bad = 1;
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0)
            break;
        nframes++;
    }
    zmq_msg_close(&m);
    if (bad || !*env) {
        if (*env)
            docmint__envelope__free_unpacked(*env, NULL);
        *env = NULL;
        dm_err(err, "malformed message (%d frames)", nframes);
        return 0;
    }
    return 1;
}

int wire_recv(void *sock, unsigned char *routing_id, size_t *idlen, Docmint__Envelope **env,
              int flags, DmErr *err)
{
    return s_recv(sock, routing_id, idlen, NULL, 0, NULL, env, flags, err);
}

int wire_recv_peer(void *sock, WirePeer *peer, Docmint__Envelope **env, int flags, DmErr *err)
{
    peer->idlen = 0;
    peer->user[0] = '\0';
    peer->bytes = 0;
    return s_recv(sock, peer->id, &peer->idlen, peer->user, sizeof peer->user, &peer->bytes, env,
                  flags, err);
}

int wire_routing_id_new(unsigned char id[WIRE_ROUTING_ID_BYTES], DmErr *err)
{
    size_t got = 0;
    while (got < WIRE_ROUTING_ID_BYTES) {
        ssize_t r = getrandom(id + got, WIRE_ROUTING_ID_BYTES - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return dm_err_errno(err, "getrandom");
        got += (size_t)r;
    }
    if (id[0] == 0)
        id[0] = 1;
    return 0;
}

/* ---------------------------------------------------------------- endpoints */

/* Split "tcp://HOST:PORT" into host and port (brackets of IPv6 kept). */
static int s_split_tcp(const char *ep, char *host, size_t hn, const char **port)
{
    if (strncmp(ep, "tcp://", 6) != 0)
        return -1;
    const char *h = ep + 6;
    const char *colon = strrchr(h, ':');
    if (!colon || (size_t)(colon - h) >= hn)
        return -1;
    memcpy(host, h, (size_t)(colon - h));
    host[colon - h] = '\0';
    *port = colon + 1;
    return 0;
}

static int s_is_wildcard(const char *host)
{
    return !strcmp(host, "0.0.0.0") || !strcmp(host, "*") || !strcmp(host, "[::]") ||
           !strcmp(host, "::");
}

static int s_first_ipv4(char *out, size_t n)
{
    struct ifaddrs *ifa = NULL;
    if (getifaddrs(&ifa) != 0)
        return -1;
    int rc = -1;
    for (struct ifaddrs *p = ifa; p; p = p->ifa_next) {
        if (!p->ifa_addr || p->ifa_addr->sa_family != AF_INET)
            continue;
        struct sockaddr_in *sa = (struct sockaddr_in *)p->ifa_addr;
        if ((ntohl(sa->sin_addr.s_addr) >> 24) == 127)
            continue;
        if (inet_ntop(AF_INET, &sa->sin_addr, out, (socklen_t)n)) {
            rc = 0;
            break;
        }
    }
    freeifaddrs(ifa);
    return rc;
}

int wire_advertise_endpoint(const char *bound, char *out, size_t n, int *wildcard, DmErr *err)
{
    char host[256];
    const char *port;
    *wildcard = 0;
    if (s_split_tcp(bound, host, sizeof host, &port) != 0 || !s_is_wildcard(host)) {
        if (strlen(bound) >= n)
            return dm_err(err, "endpoint %s is too long", bound);
        strcpy(out, bound);
        return 0;
    }
    *wildcard = 1;
    char name[256] = "";
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (gethostname(name, sizeof name - 1) == 0 && name[0] &&
        getaddrinfo(name, NULL, &hints, &ai) == 0) {
        freeaddrinfo(ai);
    } else if (s_first_ipv4(name, sizeof name) != 0) {
        strcpy(name, "127.0.0.1");
    }
    if ((size_t)snprintf(out, n, "tcp://%s:%s", name, port) >= n)
        return dm_err(err, "endpoint for %s is too long", name);
    return 0;
}

int wire_loopback_endpoint(const char *bound, char *out, size_t n)
{
    char host[256];
    const char *port;
    if (s_split_tcp(bound, host, sizeof host, &port) != 0 || !s_is_wildcard(host)) {
        snprintf(out, n, "%s", bound);
        return 0;
    }
    snprintf(out, n, "tcp://%s:%s", host[0] == '[' || host[0] == ':' ? "[::1]" : "127.0.0.1",
             port);
    return 0;
}

void wire_process_name(char *out, size_t n)
{
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(out, n, "%s:%ld", host, (long)getpid());
}
