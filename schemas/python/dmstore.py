#!/usr/bin/env python3
"""dmstore.py - read a docmint store from Python.

A store is a folder holding an LMDB environment with the named databases
"records" (key: questionId as 8-byte big-endian, value: AnswerRecord),
"errors" (key: item id, value: ErrorRecord), "meta" (UTF-8 name ->
UTF-8 text) and, in a teacher-logit store, "features" (key: page id,
value: FeatureRecord, the page's encoder output in float16).  The records
are protobuf messages of schemas/records.proto.

Command line: prints the same JSON lines as `docmint store dump`, for
every kind of store (answers, teacher logits and their features):

    /usr/bin/python3 schemas/python/dmstore.py STORE [--errors | --features]

As a module:

    import dmstore
    with dmstore.open_store("out/answers") as st:
        print(st.meta())              # {"schema_version": "1", ...}
        for rec in st:                # AnswerRecord messages in questionId order
            print(rec.question_id, rec.answer)
        rec = st.get(49153)           # one AnswerRecord or None
        for err in st.errors():       # ErrorRecord messages
            ...
    with dmstore.open_store("out/logits") as st:
        x = st.get_features("doc1.png")   # float32 numpy [tokens, dim] or None

Damage: every value of "records", "errors" and "features" in a store
whose meta "value_checksum" is "crc32c" ends in a CRC-32C of the value (4
bytes, little-endian), checked on every read (a mismatch raises
StoreError naming the store and the key).  A store written before
checksums has no value_checksum and is read as it is.  Before LMDB maps
data.mdb, its meta pages are checked: a file shorter than the last page
they name (a cut file, which would be a bus error) is refused.  The
CRC-32C uses the `crc32c` module when it is installed (pip install crc32c)
and a pure Python table otherwise (slow for large logit stores).

Needs python3-lmdb and python3-protobuf (Debian packages, for the
system's /usr/bin/python3) and the module generated from
schemas/records.proto, which `make` writes to build/gen/python/records_pb2.py
(also `make python-schemas`).  It is looked up in $DOCMINT_PYGEN, then
build*/gen/python of this checkout, then the Python path.
"""
import json
import math
import os
import struct
import sys

SCHEMA_VERSION = "1"
CHECKSUM_KEY = b"value_checksum"
CHECKSUM_NAME = b"crc32c"


def _missing(module, package):
    return ("dmstore: the Python module '%s' is missing from %s: run dmstore with "
            "/usr/bin/python3 after `apt-get install python3-lmdb python3-protobuf` (Debian "
            "package %s), or install it for this interpreter (python3 -m pip install %s)"
            % (module, sys.executable or "this Python", package, module.split(".")[0]))


def _import_deps():
    try:
        import lmdb  # noqa: F401
    except ImportError:
        raise SystemExit(_missing("lmdb", "python3-lmdb"))
    try:
        import google.protobuf  # noqa: F401
    except ImportError:
        raise SystemExit(_missing("google.protobuf", "python3-protobuf").replace(
            "pip install google", "pip install protobuf"))
    here = os.path.dirname(os.path.abspath(__file__))
    top = os.path.join(here, "..", "..")
    dirs = [os.environ.get("DOCMINT_PYGEN")] + [
        os.path.join(top, b, "gen", "python") for b in ("build", "build-san", "build-cuda", "build-san-cuda")]
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, "records_pb2.py")):
            if d not in sys.path:
                sys.path.insert(0, d)
            break
    try:
        import records_pb2  # noqa: F401
    except ImportError as e:
        raise SystemExit("dmstore: cannot import records_pb2 (%s): run `make` in the docmint "
                         "checkout (it writes build/gen/python/records_pb2.py where protoc is "
                         "installed: Debian package protobuf-compiler) or set DOCMINT_PYGEN to "
                         "the folder holding records_pb2.py" % e)


_import_deps()
import lmdb  # noqa: E402
import records_pb2  # noqa: E402


class StoreError(Exception):
    """A store that is missing, not a docmint store, of another version, or
    damaged (a cut file, a record whose checksum fails)."""


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


try:
    import crc32c as _crc32c_mod

    def crc32c(data):
        """CRC-32C (Castagnoli) of data."""
        return _crc32c_mod.crc32c(data)
except ImportError:
    _CRC_TABLE = _crc_table()

    def crc32c(data):
        """CRC-32C (Castagnoli) of data (pure Python)."""
        c = 0xFFFFFFFF
        t = _CRC_TABLE
        for b in data:
            c = t[(c ^ b) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF


def check_data_file(path):
    """Check an LMDB data.mdb against its meta pages before it is mapped
    (LMDB 0.9 layout, 64-bit: a 16-byte page header, then mm_magic,
    mm_version, mm_address, mm_mapsize, two MDB_db of 48 bytes whose first
    holds the page size, mm_last_pg, mm_txnid).  Raises StoreError."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(160)
            if len(head) < 160:
                raise StoreError("%s: damaged: the file ends (%d bytes) before meta page 0" % (path, size))
            psize = struct.unpack_from("<I", head, 40)[0]
            if psize < 512 or psize > 65536 or psize & (psize - 1):
                raise StoreError("%s: damaged: meta page 0 gives a page size of %d bytes" % (path, psize))
            f.seek(psize)
            second = f.read(160)
    except OSError as e:
        raise StoreError("%s: cannot read: %s" % (path, e))
    if len(second) < 160:
        raise StoreError("%s: damaged: the file ends (%d bytes) before meta page 1" % (path, size))
    metas = []
    for i, b in enumerate((head, second)):
        flags, = struct.unpack_from("<H", b, 10)
        magic, version = struct.unpack_from("<II", b, 16)
        if not flags & 0x08 or magic != 0xBEEFC0DE:
            raise StoreError("%s: damaged or not an LMDB file: page %d is not a meta page" % (path, i))
        if version != 1:
            raise StoreError("%s: LMDB data version %d in meta page %d" % (path, version, i))
        roots = (struct.unpack_from("<Q", b, 80)[0], struct.unpack_from("<Q", b, 128)[0])
        last_pg, txnid = struct.unpack_from("<QQ", b, 136)
        metas.append((txnid, last_pg, roots))
    which = 1 if metas[1][0] > metas[0][0] else 0
    txnid, last_pg, roots = metas[which]
    need = (last_pg + 1) * psize
    if last_pg < 1 or size < need:
        raise StoreError("%s: damaged (truncated?): %d bytes, but its meta page (txn %d) uses pages up "
                         "to %d, %d bytes" % (path, size, txnid, last_pg, need))
    for name, r in zip(("free", "main"), roots):
        if r != 0xFFFFFFFFFFFFFFFF and not 2 <= r <= last_pg:
            raise StoreError("%s: damaged: meta page %d gives the %s database the root page %d"
                             % (path, which, name, r))


class Store:
    """A docmint store opened read-only.  Iterating yields AnswerRecords in
    key (questionId) order (LogitRecords for a store of kind "logits")."""

    def __init__(self, path):
        self.path = path
        if not os.path.isdir(path):
            raise StoreError("%s: no such store" % path)
        if not os.path.isfile(os.path.join(path, "data.mdb")):
            raise StoreError("%s: not a docmint store (no data.mdb in the folder)" % path)
        check_data_file(os.path.join(path, "data.mdb"))
        try:
            self.env = lmdb.open(path, readonly=True, lock=True, max_dbs=8, subdir=True)
        except lmdb.Error as e:
            raise StoreError("%s: cannot open: %s" % (path, e))
        try:
            with self.env.begin() as txn:
                if txn.get(b"meta") is None:
                    raise StoreError("%s: not a docmint store (no meta database)" % path)
            self._meta = self.env.open_db(b"meta", create=False)
            with self.env.begin(db=self._meta) as txn:
                v = txn.get(b"schema_version")
            if v is None:
                raise StoreError("%s: not a docmint store (its meta database has no schema_version)" % path)
            if v.decode("utf-8", "replace") != SCHEMA_VERSION:
                raise StoreError("%s: store schema version '%s', this reader reads version %s"
                                 % (path, v.decode("utf-8", "replace"), SCHEMA_VERSION))
            with self.env.begin(db=self._meta) as txn:
                ck = txn.get(CHECKSUM_KEY)
            if ck is not None and ck != CHECKSUM_NAME:
                raise StoreError("%s: meta value_checksum is '%s', this reader knows 'crc32c'"
                                 % (path, ck.decode("utf-8", "replace")))
            self.checksums = ck is not None
            self._records = self.env.open_db(b"records", create=False)
            self._errors = self.env.open_db(b"errors", create=False)
            # "features" came after schema version 1: older stores lack it.
            with self.env.begin() as txn:
                has_features = txn.get(b"features") is not None
            self._features = self.env.open_db(b"features", create=False) if has_features else None
        except lmdb.Error as e:
            self.env.close()
            raise StoreError("%s: %s" % (path, e))
        except StoreError:
            self.env.close()
            raise

    def close(self):
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def meta(self):
        """The meta database as a dict of str."""
        with self.env.begin(db=self._meta) as txn:
            return {k.decode("utf-8"): v.decode("utf-8") for k, v in txn.cursor()}

    def _key_name(self, cls, key):
        if cls is records_pb2.AnswerRecord and len(key) == 8:
            return "questionId %d" % struct.unpack(">Q", key)[0]
        if cls is records_pb2.LogitRecord and len(key) == 10:
            return "questionId %d answer %d" % struct.unpack(">QH", key)
        return "item '%s'" % key.decode("utf-8", "replace")

    def _value(self, cls, key, value):
        """The record bytes of a stored value, its checksum checked."""
        if not self.checksums:
            return value
        if len(value) < 4:
            raise StoreError("%s: %s: damaged: %d bytes, shorter than its checksum"
                             % (self.path, self._key_name(cls, key), len(value)))
        body, tail = value[:-4], struct.unpack("<I", value[-4:])[0]
        got = crc32c(body)
        if got != tail:
            raise StoreError("%s: %s: checksum mismatch: CRC-32C of its %d bytes is %08x, the record says "
                             "%08x" % (self.path, self._key_name(cls, key), len(body), got, tail))
        return body

    def _parse(self, cls, key, value):
        value = self._value(cls, key, value)
        m = cls()
        try:
            m.ParseFromString(value)
        except Exception as e:  # google.protobuf.message.DecodeError
            name = self._key_name(cls, key)
            raise StoreError("%s: %s: not a %s: %s" % (self.path, name, cls.__name__, e))
        return m

    def _iter(self, db, cls):
        with self.env.begin(db=db, buffers=False) as txn:
            for k, v in txn.cursor():
                yield k, self._parse(cls, k, v)

    def __iter__(self):
        kind = self.meta().get("kind")
        cls = (records_pb2.LogitRecord if kind == "logits" else
               records_pb2.AnalysisRecord if kind == "analysis" else records_pb2.AnswerRecord)
        for _, rec in self._iter(self._records, cls):
            yield rec

    def logit_records(self):
        """A teacher-logit store's LogitRecords in (questionId, answer
        index) order (layout: schemas/records.proto).  Readers must check
        meta()["teacher_fingerprint"] and ["tokenizer_fingerprint"]."""
        for _, rec in self._iter(self._records, records_pb2.LogitRecord):
            yield rec

    def analysis_records(self):
        """An analysis store's AnalysisRecords (stage analyze) in
        (questionId, answer index) order; the fields and their shapes are
        described in schemas/records.proto, the aggregates are in
        meta()["aggregates"] (the job's report.json)."""
        for _, rec in self._iter(self._records, records_pb2.AnalysisRecord):
            yield rec

    def records(self):
        """AnswerRecords in questionId order."""
        return iter(self)

    def errors(self):
        """ErrorRecords in item order."""
        for _, rec in self._iter(self._errors, records_pb2.ErrorRecord):
            yield rec

    def get(self, question_id):
        """The AnswerRecord of question_id, or None."""
        with self.env.begin(db=self._records) as txn:
            k = struct.pack(">Q", question_id & 0xFFFFFFFFFFFFFFFF)
            v = txn.get(k)
        return None if v is None else self._parse(records_pb2.AnswerRecord, k, v)

    def get_error(self, item):
        """The ErrorRecord of item (questionId or page id), or None."""
        with self.env.begin(db=self._errors) as txn:
            k = str(item).encode("utf-8")
            v = txn.get(k)
        return None if v is None else self._parse(records_pb2.ErrorRecord, k, v)

    def features(self):
        """FeatureRecords (per-page encoder outputs) in page id order; none
        when the store was made without keep_features."""
        if self._features is None:
            return
        for _, rec in self._iter(self._features, records_pb2.FeatureRecord):
            yield rec

    def get_features(self, page_id):
        """The encoder output of page_id as a float32 numpy array [tokens,
        dim] (needs numpy), or None when the store does not hold it."""
        if self._features is None:
            return None
        k = page_id.encode("utf-8")
        with self.env.begin(db=self._features) as txn:
            v = txn.get(k)
        if v is None:
            return None
        r = self._parse(records_pb2.FeatureRecord, k, v)
        if r.page_id != page_id:
            raise StoreError("%s: the features stored under page %s are of page %s"
                             % (self.path, page_id, r.page_id))
        if r.tokens < 1 or r.dim < 1 or len(r.values) != r.tokens * r.dim * 2:
            raise StoreError("%s: features of page %s: values hold %d bytes, want %d x %d x 2"
                             % (self.path, page_id, len(r.values), r.tokens, r.dim))
        import numpy
        return numpy.frombuffer(r.values, dtype="<f2").astype(numpy.float32).reshape(r.tokens, r.dim)

    def counts(self):
        """(records, errors)."""
        with self.env.begin() as txn:
            return (txn.stat(self._records)["entries"], txn.stat(self._errors)["entries"])


def open_store(path):
    """Open the docmint store at path (a folder) read-only."""
    return Store(path)


# ---- JSON lines, byte-identical to `docmint store dump` ------------------

def format_float(x):
    """Shortest %g (1..9 digits) that reads back to the same float32, as
    docmint's C writer chooses; None (null) when not finite."""
    if not math.isfinite(x):
        return "null"
    for p in range(1, 10):
        s = "%.*g" % (p, x)
        try:
            if struct.unpack("<f", struct.pack("<f", float(s)))[0] == x:
                return s
        except OverflowError:  # rounds past FLT_MAX: C's (float) gives inf
            pass
    return s


def _s(text):
    return json.dumps(text, ensure_ascii=False)


def answer_json(r):
    return ('{"questionId":%d,"answer":%s,"token_ids":[%s],"mean_logprob":%s,"seconds":%s,'
            '"page_id":%s,"question":%s}'
            % (r.question_id, _s(r.answer), ",".join("%d" % t for t in r.token_ids),
               format_float(r.mean_logprob), format_float(r.seconds), _s(r.page_id), _s(r.question)))


def _s_c(text):
    """A JSON string as jansson writes it (docmint's C side): UTF-8 kept,
    control characters as \\uXXXX in capitals."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif o < 0x20:
            out.append("\\u%04X" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _real_c(x):
    """A double as jansson writes it: %.17g, with ".0" when it looks integral."""
    s = "%.17g" % x
    if "." not in s and "e" not in s and "n" not in s:
        s += ".0"
    return s


def logit_positions(r):
    """Answer positions a LogitRecord covers."""
    return len(r.token_ids) - 1 - r.answer_start


def logit_json(r):
    """A LogitRecord's identity and shape, as `docmint store dump` prints it."""
    return ('{"questionId":%d,"answer_index":%d,"answer":%s,"page_id":%s,"positions":%d,'
            '"k":%d,"vocab":%d,"full":%s,"targets":[%s]}'
            % (r.question_id, r.answer_index, _s_c(r.answer), _s_c(r.page_id), logit_positions(r),
               r.k, r.vocab, "true" if r.full else "false", ",".join("%d" % t for t in r.targets)))


def feature_json(r):
    """A FeatureRecord's page and shape and its largest |value|, as `docmint
    store dump --features` prints it."""
    n = len(r.values) // 2
    amax = max((abs(v) for v in struct.unpack("<%de" % n, r.values[:2 * n])), default=0.0)
    return ('{"page_id":%s,"tokens":%d,"dim":%d,"image_path":%s,"page_no":%d,"value_bytes":%d,'
            '"max_abs":%s}'
            % (_s_c(r.page_id), r.tokens, r.dim, _s_c(r.image_path), r.page_no, len(r.values),
               _real_c(amax)))


def error_json(r):
    return ('{"item":%s,"stage":%s,"reason":%s,"questionId":%d}'
            % (_s(r.item), _s(r.stage), _s(r.reason), r.question_id))


def main(argv):
    args = [a for a in argv[1:] if a not in ("--errors", "--features")]
    errors = "--errors" in argv[1:]
    features = "--features" in argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print("usage: dmstore.py STORE [--errors | --features]\n"
              "  prints every record of STORE as JSON lines, as `docmint store dump` does\n"
              "  (answers, or a logit store's LogitRecords)\n"
              "  --errors    the error records instead\n"
              "  --features  a logit store's per-page encoder outputs instead\n"
              "  records_pb2 is found in $DOCMINT_PYGEN or build/gen/python (written by make)")
        return 0
    bad = [a for a in args if a.startswith("-")]
    if bad or len(args) != 1 or (errors and features):
        print("dmstore: usage: dmstore.py STORE [--errors | --features]%s"
              % (" (unknown flag '%s')" % bad[0] if bad else ""), file=sys.stderr)
        return 2
    try:
        with open_store(args[0]) as st:
            out = sys.stdout
            if errors:
                for r in st.errors():
                    out.write(error_json(r) + "\n")
            elif features:
                for r in st.features():
                    out.write(feature_json(r) + "\n")
            elif st.meta().get("kind") == "logits":
                for r in st.logit_records():
                    out.write(logit_json(r) + "\n")
            else:
                for r in st:
                    out.write(answer_json(r) + "\n")
            out.flush()
    except StoreError as e:
        print("dmstore: %s" % e, file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(encoding="utf-8")
    sys.exit(main(sys.argv))
