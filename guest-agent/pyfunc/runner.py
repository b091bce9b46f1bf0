# sailbox function runner (stdlib only). Reads pickle.dumps((callable, args,
# kwargs)) on stdin, calls it, and writes one record to fd 3:
#   b"R" + pickle.dumps(result)          the function returned
#   b"E" + JSON {type, message, traceback}  it raised (or the payload/result
#                                          could not be (un)pickled)
# fd 3 is moved to a non-inheritable descriptor first, so the function's
# own prints (fd 1 and 2) and its subprocesses never touch the record.
import json
import os
import pickle
import sys
import traceback


def main():
    out = os.fdopen(os.dup(3), "wb")  # os.dup: not inheritable (PEP 446)
    os.close(3)
    data = sys.stdin.buffer.read()
    try:
        stdin = open(os.devnull, "rb")
        os.dup2(stdin.fileno(), 0)
        call = pickle.loads(data)
        del data
        if not (isinstance(call, tuple) and len(call) == 3 and callable(call[0])):
            raise TypeError("payload must be pickle.dumps((callable, args, kwargs)), got %s" % type(call).__name__)
        fn, args, kwargs = call
        result = fn(*(args or ()), **(kwargs or {}))
        record = b"R" + pickle.dumps(result, protocol=pickle.DEFAULT_PROTOCOL)
    except BaseException as e:
        t = type(e)
        name = t.__qualname__ if t.__module__ == "builtins" else t.__module__ + "." + t.__qualname__
        tb = e.__traceback__
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next  # the runner's own frame says nothing
        try:
            message = str(e)
        except BaseException:
            message = "<str() of the exception failed>"
        # Bounded, so an exception always fits in the answer: long lines
        # (a huge message) are cut, then the middle of a long traceback.
        lines = [l if len(l) <= 65536 else l[:65536] + "...\n"
                 for l in traceback.TracebackException(t, e, tb).format()]
        text = "".join(lines)
        if len(text) > 262144:
            text = text[:65536] + "...\n" + text[-196608:]
        if len(message) > 65536:
            message = message[:65536] + "..."
        record = b"E" + json.dumps({"type": name, "message": message, "traceback": text}).encode()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    out.write(record)
    out.close()


main()
