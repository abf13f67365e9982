//! The Helm chart (helm/tandem), checked as far as can be done without a Kubernetes cluster:
//! `scripts/check_chart.py` lints and renders it with the real Helm library for every value
//! set in helm/tandem/ci/, validates every manifest against the Kubernetes API schemas, asserts
//! what each value set promises, and runs this build's `tandem serve --check-config` on the
//! node container's rendered command line and environment.

use std::path::Path;
use std::process::Command;

#[test]
fn chart_renders_lints_validates_and_its_command_line_is_accepted() {
    let python = std::env::var("TANDEM_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check_chart.py");
    let binary = tandem_tests::tandem_binary().unwrap();
    let output = Command::new(&python)
        .arg(&script)
        .arg("--tandem")
        .arg(&binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} with {python}: {e}", script.display()));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the chart check failed (needs helm-python-sdk, kubernetes-validate and PyYAML: scripts/prereqs.sh \
         --for-tests installs them):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("wrong value sets refused"), "every check ran:\n{stdout}");
}
