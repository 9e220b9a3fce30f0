#!/usr/bin/env python3
"""dmstore.py - read a docmint store from Python.

A store is a folder holding an LMDB environment with the named databases
"records" (key: questionId as 8-byte big-endian, value: AnswerRecord),
"errors" (key: item id, value: ErrorRecord), "meta" (UTF-8 name ->
UTF-8 text) and, in a teacher-logit store, "features" (key: page id,
value: FeatureRecord, the page's encoder output in float16).  The records
are protobuf messages of schemas/records.proto.

Command line: prints the same JSON lines as `docmint store dump`:

    python3 schemas/python/dmstore.py STORE [--errors]

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

Needs python3-lmdb and python3-protobuf (Debian packages) and the module
generated from schemas/records.proto by `make python-schemas`
(build/gen/python/records_pb2.py).  It is looked up in $DOCMINT_PYGEN,
then build/gen/python of this checkout, then the Python path.
"""
import json
import math
import os
import struct
import sys

SCHEMA_VERSION = "1"


def _import_deps():
    try:
        import lmdb  # noqa: F401
    except ImportError:
        raise SystemExit("dmstore: the Python module 'lmdb' is missing "
                         "(Debian package python3-lmdb; python is %s)" % sys.executable)
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.environ.get("DOCMINT_PYGEN"), os.path.join(here, "..", "..", "build", "gen", "python")):
        if d and os.path.isfile(os.path.join(d, "records_pb2.py")):
            if d not in sys.path:
                sys.path.insert(0, d)
            break
    try:
        import records_pb2  # noqa: F401
    except ImportError as e:
        raise SystemExit("dmstore: cannot import records_pb2 (%s): run `make python-schemas` "
                         "or set DOCMINT_PYGEN to the folder holding records_pb2.py" % e)


_import_deps()
import lmdb  # noqa: E402
import records_pb2  # noqa: E402


class StoreError(Exception):
    """A store that is missing, not a docmint store, or of another version."""


class Store:
    """A docmint store opened read-only.  Iterating yields AnswerRecords in
    key (questionId) order (LogitRecords for a store of kind "logits")."""

    def __init__(self, path):
        self.path = path
        if not os.path.isdir(path):
            raise StoreError("%s: no such store" % path)
        if not os.path.isfile(os.path.join(path, "data.mdb")):
            raise StoreError("%s: not a docmint store (no data.mdb in the folder)" % path)
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

    def _parse(self, cls, key, value):
        m = cls()
        try:
            m.ParseFromString(value)
        except Exception as e:  # google.protobuf.message.DecodeError
            name = ("questionId %d" % struct.unpack(">Q", key)[0]
                    if cls is records_pb2.AnswerRecord and len(key) == 8
                    else "item '%s'" % key.decode("utf-8", "replace"))
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


def error_json(r):
    return ('{"item":%s,"stage":%s,"reason":%s,"questionId":%d}'
            % (_s(r.item), _s(r.stage), _s(r.reason), r.question_id))


def main(argv):
    args = [a for a in argv[1:] if a != "--errors"]
    errors = len(args) != len(argv) - 1
    if any(a in ("-h", "--help") for a in args):
        print("usage: dmstore.py STORE [--errors]\n"
              "  prints every record of STORE as JSON lines, as `docmint store dump` does\n"
              "  --errors  the error records instead of the answers (default: answers)\n"
              "  records_pb2 is found in $DOCMINT_PYGEN or build/gen/python (make python-schemas)")
        return 0
    bad = [a for a in args if a.startswith("-")]
    if bad or len(args) != 1:
        print("dmstore: usage: dmstore.py STORE [--errors]%s"
              % (" (unknown flag '%s')" % bad[0] if bad else ""), file=sys.stderr)
        return 2
    try:
        with open_store(args[0]) as st:
            out = sys.stdout
            if errors:
                for r in st.errors():
                    out.write(error_json(r) + "\n")
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
