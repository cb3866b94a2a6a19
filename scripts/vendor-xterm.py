#!/usr/bin/env python3
"""Vendors xterm.js for the web console from Debian's `node-xterm` package (3.8.1), offline.

Debian ships xterm.js as CommonJS modules (/usr/share/nodejs/xterm/lib) with no browser bundle,
so this joins the modules the terminal needs (no tests, no addons) into one browser script
behind a small `require`, which sets `window.Terminal`. It also copies xterm.css and the
package's copyright file. Run it again after a node-xterm upgrade; the output is committed
under src/orchestrator/http/console/vendor/ and embedded in sandboxd.

    apt-get install node-xterm && scripts/vendor-xterm.py
"""
import json
import pathlib
import shutil
import subprocess

SRC = pathlib.Path("/usr/share/nodejs/xterm")
OUT = pathlib.Path(__file__).resolve().parent.parent / "src/orchestrator/http/console/vendor"


def main() -> None:
    lib = SRC / "lib"
    version = json.loads((SRC / "package.json").read_text())["version"]
    deb = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "node-xterm"], capture_output=True, text=True, check=True
    ).stdout
    modules = sorted(
        p
        for p in lib.rglob("*.js")
        if not p.name.endswith(".test.js") and "addons" not in p.relative_to(lib).parts
        and "test" not in p.relative_to(lib).parts
    )
    parts = [
        f"/* xterm.js {version}, from Debian's node-xterm {deb} (/usr/share/nodejs/xterm/lib),\n"
        " * joined into one browser script by scripts/vendor-xterm.py. MIT licence: LICENSE.xterm. */\n",
        "(function () {\n'use strict';\nvar defs = {}, cache = {};\n",
        "function resolve(from, to) {\n"
        "  var parts = from.split('/'); parts.pop();\n"
        "  to.split('/').forEach(function (s) { if (s === '..') parts.pop(); else if (s !== '.') parts.push(s); });\n"
        "  var p = parts.join('/'); return defs[p + '.js'] ? p + '.js' : p + '/index.js';\n}\n",
        "function load(name) {\n"
        "  if (cache[name]) return cache[name].exports;\n"
        "  var module = { exports: {} }; cache[name] = module;\n"
        "  defs[name].call(module.exports, module, module.exports, function (to) { return load(resolve(name, to)); });\n"
        "  return module.exports;\n}\n",
    ]
    for p in modules:
        name = p.relative_to(lib).as_posix()
        body = p.read_text().replace("//# sourceMappingURL=", "// (map not vendored) ")
        parts.append(f"defs[{json.dumps(name)}] = function (module, exports, require) {{\n{body}\n}};\n")
    parts.append("window.Terminal = load('xterm.js');\n})();\n")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "xterm.js").write_text("".join(parts))
    shutil.copy(lib / "xterm.css", OUT / "xterm.css")
    shutil.copy("/usr/share/doc/node-xterm/copyright", OUT / "LICENSE.xterm")
    print(f"vendored xterm.js {version} ({len(modules)} modules) into {OUT}")


if __name__ == "__main__":
    main()
