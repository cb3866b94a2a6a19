"""execd's built-in Python driver: a REPL-like executor for images without Jupyter.

Protocol (execd owns both ends; the user's code sees neither):
  * requests arrive as JSON lines on the original stdin, which is then replaced by /dev/null;
  * replies go as JSON lines to fd 3 (not inherited by subprocesses):
      {"type": "started"}  once the cell runs and SIGINT can interrupt it
      {"type": "result", "data": {mime: value}, "execution_count": n}
      {"type": "error", "ename": ..., "evalue": ..., "traceback": [...]}
      {"type": "done", "execution_count": n}
  * the cell's stdout/stderr are the process's own, unbuffered, streamed as written.
SIGINT raises KeyboardInterrupt in the running cell, and is ignored between cells: a
KeyboardInterrupt while waiting for a request would end the driver (issue 19).
"""
import ast
import base64
import io
import json
import os
import signal
import sys
import traceback

_requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
sys.stdin = open(os.devnull, "r")
os.set_inheritable(3, False)
_replies = os.fdopen(3, "w", encoding="utf-8", buffering=1)

_namespace = {"__name__": "__main__", "__builtins__": __builtins__}
_count = 0
# True while a cell runs: only then does SIGINT raise KeyboardInterrupt. execd interrupts
# only after "started", which is sent once this is set.
_armed = False


def _on_sigint(signum, frame):
    if _armed:
        raise KeyboardInterrupt


def _send(message):
    sys.stdout.flush()
    sys.stderr.flush()
    _replies.write(json.dumps(message) + "\n")
    _replies.flush()


def _bundle(value):
    data = {"text": repr(value)}
    for method, mime in (("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"),
                         ("_repr_png_", "image/png"), ("_repr_svg_", "image/svg+xml"),
                         ("_repr_json_", "application/json")):
        fn = getattr(value, method, None)
        if callable(fn):
            try:
                out = fn()
            except Exception:
                continue
            if out is None:
                continue
            if isinstance(out, bytes):
                out = base64.b64encode(out).decode("ascii")
            data[mime] = out
    return data


def _display(*objects):
    for obj in objects:
        _send({"type": "result", "data": _bundle(obj)})


def _flush_figures():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        _send({"type": "result", "data": {
            "text": "<Figure size %dx%d>" % tuple(fig.get_size_inches() * fig.dpi),
            "image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
        }})
    plt.close("all")


_namespace["display"] = _display


def _run(code):
    global _count, _armed
    _count += 1
    try:
        _armed = True
        _send({"type": "started"})
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), _namespace)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), _namespace)
            if value is not None:
                _namespace["_"] = value
                _send({"type": "result", "data": _bundle(value), "execution_count": _count})
        _flush_figures()
    except BaseException as exc:  # noqa: BLE001 - report everything, including KeyboardInterrupt
        _armed = False
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            pass
        else:
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
            # Drop the driver's own frame from the traceback.
            tb = [line for line in tb if 'driver.py' not in line]
            _send({"type": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": tb})
    _armed = False
    # The cell may have installed its own handler; like ipykernel, start each cell afresh.
    signal.signal(signal.SIGINT, _on_sigint)
    _send({"type": "done", "execution_count": _count})


os.environ.setdefault("MPLBACKEND", "Agg")
signal.signal(signal.SIGINT, _on_sigint)
for _line in _requests:
    try:
        _request = json.loads(_line)
    except ValueError:
        continue
    try:
        _run(_request.get("code", ""))
    except KeyboardInterrupt:
        # Only a second interrupt landing as the cell reports the first gets here.
        _armed = False
        signal.signal(signal.SIGINT, _on_sigint)
        _send({"type": "error", "ename": "KeyboardInterrupt", "evalue": "", "traceback": []})
        _send({"type": "done", "execution_count": _count})
