//! Validation against a JSON Schema with an independent implementation: Python's `jsonschema`
//! (Debian's python3-jsonschema, installed by `cargo xtask setup`), Draft 2020-12 with format
//! checks.

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether the validator is installed (for `privileged::require`).
pub fn available() -> Result<(), String> {
    let ok = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(
            "python3 with jsonschema not found (run `cargo xtask setup`: python3-jsonschema)"
                .into(),
        )
    }
}

const SCRIPT: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
bad = 0
for n, line in enumerate(sys.stdin, 1):
    for e in v.iter_errors(json.loads(line)):
        bad += 1
        print(f"record {n}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
sys.exit(1 if bad else 0)
"#;

/// Validates every record against the schema file; `Err` lists each violation.
pub fn validate(schema: &std::path::Path, records: &[serde_json::Value]) -> Result<(), String> {
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    {
        let mut stdin = child.stdin.take().unwrap();
        for r in records {
            writeln!(stdin, "{r}").map_err(|e| e.to_string())?;
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
