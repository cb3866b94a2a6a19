//! The handler runner: a small program, embedded here, that execd starts with the language's
//! interpreter (`python3 -c RUNNER <dir> <handler> <execution> <sandbox> <deadline>`, or
//! `node -e …`). It loads `<dir>/handler.py` (`.js`) as a module, reads `<dir>/event.json`,
//! calls the handler with the event (and a context when it takes two parameters), awaits a
//! coroutine or promise, and writes `<dir>/result.json` (through a temp file and a rename):
//! `{"ok": true, "result": …}` or `{"ok": false, "error": {"kind", "name", "value",
//! "traceback"}}`. The result travels through the file, never through stdout, so whatever
//! the handler prints cannot corrupt it. Pure: what runs and how its answer reads.

use crate::wire::errors::{self as codes};
use crate::wire::executions::ExecutionError;

/// Where a handler's files go inside the sandbox.
pub const DIR_BASE: &str = "/tmp/.sandboxd";

/// The largest `result.json` read back (10 MiB, plus the envelope).
pub const MAX_RESULT: usize = 10 * 1024 * 1024 + 4096;

/// The Python runner.
pub const PYTHON: &str = r#"import asyncio, importlib.util, inspect, json, os, sys, traceback
d, name = sys.argv[1], sys.argv[2]
context = {"executionId": sys.argv[3], "sandboxId": sys.argv[4], "deadline": sys.argv[5]}
out = os.path.join(d, "result.json")
def write(obj):
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    os.replace(tmp, out)
def fail(kind, e):
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    write({"ok": False, "error": {"kind": kind, "name": type(e).__name__, "value": str(e), "traceback": tb}})
    sys.exit(0)
try:
    with open(os.path.join(d, "event.json")) as f:
        event = json.load(f)
    spec = importlib.util.spec_from_file_location("handler", os.path.join(d, "handler.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["handler"] = module
    spec.loader.exec_module(module)
except BaseException as e:
    fail("handler_error", e)
fn = getattr(module, name, None)
if not callable(fn):
    write({"ok": False, "error": {"kind": "handler_not_found", "name": "HandlerNotFound",
           "value": "the code defines no function named %r" % name, "traceback": []}})
    sys.exit(0)
try:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        two = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):
        two = False
    result = fn(event, context) if two else fn(event)
    if inspect.isawaitable(result):
        async def wait(a):
            return await a
        result = asyncio.run(wait(result))
except BaseException as e:
    fail("handler_error", e)
try:
    text = json.dumps({"ok": True, "result": result}, allow_nan=False)
except (TypeError, ValueError, RecursionError) as e:
    fail("not_serializable", e)
write(text)
"#;

/// The JavaScript runner (node).
pub const JAVASCRIPT: &str = r#"const fs = require('fs'), path = require('path'), Module = require('module');
const [d, name, executionId, sandboxId, deadline] = process.argv.slice(1);
const out = path.join(d, 'result.json');
const write = (text) => { fs.writeFileSync(out + '.tmp', text); fs.renameSync(out + '.tmp', out); };
const fail = (kind, e) => {
  const err = e instanceof Error ? e : new Error(String(e));
  write(JSON.stringify({ok: false, error: {kind, name: err.name || 'Error', value: err.message,
    traceback: String(err.stack || '').split('\n')}}));
  process.exit(0);
};
(async () => {
  let fn, event;
  try {
    event = JSON.parse(fs.readFileSync(path.join(d, 'event.json'), 'utf8'));
    const file = path.join(d, 'handler.js');
    const m = new Module(file, module);
    m.filename = file;
    m.paths = Module._nodeModulePaths(d);
    const src = fs.readFileSync(file, 'utf8') +
      `\n;module.exports.__sandboxd_handler = (typeof ${name} === 'function') ? ${name} : module.exports.${name};`;
    m._compile(src, file);
    fn = m.exports.__sandboxd_handler;
  } catch (e) { fail('handler_error', e); }
  if (typeof fn !== 'function') {
    write(JSON.stringify({ok: false, error: {kind: 'handler_not_found', name: 'HandlerNotFound',
      value: `the code defines no function named '${name}'`, traceback: []}}));
    process.exit(0);
  }
  let result;
  try {
    result = fn.length >= 2 ? fn(event, {executionId, sandboxId, deadline}) : fn(event);
    result = await result;
  } catch (e) { fail('handler_error', e); }
  let text;
  try {
    if (typeof result === 'function' || typeof result === 'symbol')
      throw new TypeError(`a ${typeof result} is not JSON`);
    text = JSON.stringify({ok: true, result: result === undefined ? null : result});
  } catch (e) { fail('not_serializable', e); }
  write(text);
  process.exit(0);
})();
"#;

/// The languages handlers and code run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// `python3`.
    Python,
    /// `node`.
    JavaScript,
}

impl Language {
    /// The language named `text` (`python`, `python3`, `javascript`, `js`, `node`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Language::Python),
            "javascript" | "js" | "node" | "nodejs" => Some(Language::JavaScript),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
        }
    }

    /// The file the handler's code is written to.
    pub fn file(self) -> &'static str {
        match self {
            Language::Python => "handler.py",
            Language::JavaScript => "handler.js",
        }
    }

    /// The argv that runs the handler in `dir`.
    pub fn argv(
        self,
        dir: &str,
        handler: &str,
        execution: &str,
        sandbox: &str,
        deadline: &str,
    ) -> Vec<String> {
        let (program, flag, runner) = match self {
            Language::Python => ("python3", "-c", PYTHON),
            Language::JavaScript => ("node", "-e", JAVASCRIPT),
        };
        [program, flag, runner, dir, handler, execution, sandbox, deadline]
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

/// The directory of an execution's handler files.
pub fn dir(execution: &str) -> String {
    format!("{DIR_BASE}/{execution}")
}

/// What `result.json` said: the return value, or the error to record.
pub fn read_result(bytes: &[u8]) -> Result<serde_json::Value, ExecutionError> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        ok: bool,
        #[serde(default)]
        result: serde_json::Value,
        #[serde(default)]
        error: Option<RunnerError>,
    }
    #[derive(serde::Deserialize)]
    struct RunnerError {
        kind: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        value: String,
        #[serde(default)]
        traceback: Vec<String>,
    }
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| ExecutionError {
        code: codes::EXECUTION_HANDLER_ERROR.code.to_owned(),
        name: Some("RunnerError".into()),
        value: None,
        traceback: Vec::new(),
        message: Some(format!("the runner's result file is not readable: {e}")),
    })?;
    if envelope.ok {
        return Ok(envelope.result);
    }
    let e = envelope.error.unwrap_or(RunnerError {
        kind: "handler_error".into(),
        name: "RunnerError".into(),
        value: "the runner reported a failure without details".into(),
        traceback: Vec::new(),
    });
    let code = match e.kind.as_str() {
        "handler_not_found" => &codes::EXECUTION_HANDLER_NOT_FOUND,
        "not_serializable" => &codes::EXECUTION_RESULT_NOT_SERIALIZABLE,
        _ => &codes::EXECUTION_HANDLER_ERROR,
    };
    Err(ExecutionError {
        code: code.code.to_owned(),
        message: Some(match e.kind.as_str() {
            "handler_not_found" => e.value.clone(),
            "not_serializable" => format!("the handler's result is not JSON: {}", e.value),
            _ => format!("{}: {}", e.name, e.value),
        }),
        name: Some(e.name),
        value: Some(e.value),
        traceback: e.traceback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_errors_read_back() {
        assert_eq!(
            read_result(br#"{"ok":true,"result":{"status":"ok"}}"#),
            Ok(serde_json::json!({"status": "ok"}))
        );
        let e = read_result(
            br#"{"ok":false,"error":{"kind":"handler_error","name":"KeyError","value":"'x'","traceback":["Traceback...","KeyError: 'x'\n"]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, "EXECUTION::HANDLER_ERROR");
        assert_eq!(
            (e.name.as_deref(), e.value.as_deref(), e.traceback.len()),
            (Some("KeyError"), Some("'x'"), 2)
        );
        let e = read_result(
            br#"{"ok":false,"error":{"kind":"handler_not_found","name":"HandlerNotFound","value":"no"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, "EXECUTION::HANDLER_NOT_FOUND");
        let e = read_result(
            br#"{"ok":false,"error":{"kind":"not_serializable","name":"TypeError","value":"set"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, "EXECUTION::RESULT_NOT_SERIALIZABLE");
        assert_eq!(
            read_result(b"garbage").unwrap_err().code,
            "EXECUTION::HANDLER_ERROR"
        );
    }

    #[test]
    fn languages_and_argv() {
        assert_eq!(Language::parse("Python"), Some(Language::Python));
        assert_eq!(Language::parse("js"), Some(Language::JavaScript));
        assert_eq!(Language::parse("ruby"), None);
        let argv = Language::Python.argv("/tmp/.sandboxd/exec-1", "main", "exec-1", "sb", "t");
        assert_eq!(argv[0], "python3");
        assert_eq!(argv[2], PYTHON);
        assert_eq!(&argv[3..], ["/tmp/.sandboxd/exec-1", "main", "exec-1", "sb", "t"]);
    }

    /// Runs `language`'s runner on the host's interpreter (python3 and node are on every
    /// machine this project is built on): the result, and what the handler printed.
    fn run_runner(
        language: Language,
        code: &str,
        handler: &str,
        event: &str,
    ) -> (Result<serde_json::Value, ExecutionError>, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(language.file()), code).unwrap();
        std::fs::write(dir.path().join("event.json"), event).unwrap();
        let d = dir.path().to_str().unwrap();
        let argv = language.argv(d, handler, "exec-1", "sb-1", "2030-01-01T00:00:00Z");
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap_or_else(|e| panic!("{} is needed on this host: {e}", argv[0]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(dir.path().join("result.json")).unwrap();
        (
            read_result(&bytes),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// What one case expects of a runner.
    enum Expect {
        /// This result, and this printed output (when given).
        Result(serde_json::Value, Option<&'static str>),
        /// This error code, and this exception name (when given).
        Error(&'static str, Option<&'static str>),
    }

    /// Both runners over the same cases: prints never reach the result, coroutines are
    /// awaited, two-parameter handlers get the context, a handler is found as a function or
    /// an export, and failures are classified (a JS function result is not a silent null).
    #[test]
    fn both_runners_run_handlers_and_classify_failures() {
        use serde_json::json;
        use Expect::{Error as Fails, Result as Gives};
        let alice = r#"{"name":"Alice"}"#;
        let ok_alice = json!({"status": "ok", "data": {"name": "Alice"}});
        let cases: [(Language, &str, &str, &str, Expect); 14] = [
            (Language::Python, "def handler(event):\n    print('{\"ok\": false}')\n    return {\"status\": \"ok\", \"data\": event}\n", "handler", alice, Gives(ok_alice.clone(), Some("{\"ok\": false}\n"))),
            (Language::Python, "import asyncio\nasync def main(event, context):\n    await asyncio.sleep(0)\n    return context['executionId']\n", "main", "null", Gives(json!("exec-1"), None)),
            (Language::Python, "def handler(event):\n    return event['x']\n", "handler", "{}", Fails("EXECUTION::HANDLER_ERROR", Some("KeyError"))),
            (Language::Python, "x = 1\n", "handler", "{}", Fails("EXECUTION::HANDLER_NOT_FOUND", None)),
            (Language::Python, "def handler(event):\n    return {1, 2}\n", "handler", "{}", Fails("EXECUTION::RESULT_NOT_SERIALIZABLE", None)),
            (Language::Python, "def handler(event:\n", "handler", "{}", Fails("EXECUTION::HANDLER_ERROR", Some("SyntaxError"))),
            (Language::JavaScript, "function handler(event) {\n  console.log('{\"ok\": false}');\n  return {status: 'ok', data: event};\n}\n", "handler", alice, Gives(ok_alice, Some("{\"ok\": false}\n"))),
            (Language::JavaScript, "exports.main = async (event, context) => { await null; return context.executionId; };\n", "main", "null", Gives(json!("exec-1"), None)),
            (Language::JavaScript, "function handler(event) { return event.x.y; }\n", "handler", "{}", Fails("EXECUTION::HANDLER_ERROR", Some("TypeError"))),
            (Language::JavaScript, "const x = 1;\n", "handler", "{}", Fails("EXECUTION::HANDLER_NOT_FOUND", None)),
            (Language::JavaScript, "function handler() { return () => 1; }\n", "handler", "{}", Fails("EXECUTION::RESULT_NOT_SERIALIZABLE", None)),
            (Language::JavaScript, "function handler() { return 10n; }\n", "handler", "{}", Fails("EXECUTION::RESULT_NOT_SERIALIZABLE", None)),
            (Language::JavaScript, "function handler() {}\n", "handler", "{}", Gives(serde_json::Value::Null, None)),
            (Language::JavaScript, "function handler(event {\n", "handler", "{}", Fails("EXECUTION::HANDLER_ERROR", Some("SyntaxError"))),
        ];
        for (language, code, handler, event, expect) in cases {
            let (result, stdout) = run_runner(language, code, handler, event);
            let case = format!("{} {code:?}", language.as_str());
            match expect {
                Gives(value, printed) => {
                    assert_eq!(result, Ok(value), "{case}");
                    if let Some(printed) = printed {
                        assert_eq!(stdout, printed, "{case}");
                    }
                }
                Fails(code, name) => {
                    let e = result.expect_err(&case);
                    assert_eq!(e.code, code, "{case}");
                    if let Some(name) = name {
                        assert_eq!(e.name.as_deref(), Some(name), "{case}");
                        if code == "EXECUTION::HANDLER_ERROR" && name != "SyntaxError" {
                            assert!(e.traceback.len() > 1, "{case}: {:?}", e.traceback);
                        }
                    }
                }
            }
        }
    }
}
