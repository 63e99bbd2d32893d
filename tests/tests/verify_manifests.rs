//! `strata verify` on a vault whose manifest is damaged: the backup it
//! commits drops out of every listing, so a verify that only checks what
//! it lists would report a clean vault. It must name the manifest.

use strata_e2e::cli::Strata;
use strata_e2e::fixture::TestDir;

/// Two stream backups; one manifest is truncated. `verify` exits 6 (an
/// integrity finding), names the manifest's key and its backup, and still
/// verifies the other backup; `list` shows only the readable one.
#[test]
fn a_damaged_manifest_is_a_verify_finding() {
    let dir = TestDir::new("verify-damaged-manifest");
    let vault = dir.file_url("vault");
    let strata = || {
        Strata::new()
            .args(["--vault", &vault])
            .arg("--catalog")
            .arg(dir.path("catalog.db"))
    };
    strata().args(["vault", "init"]).run().success();
    for name in ["kept", "broken"] {
        strata()
            .args(["backup", "stream", name])
            .stdin(format!("the bytes of {name}").into_bytes())
            .run()
            .success();
    }
    let manifests = dir.path("vault/manifests/stream/broken");
    let manifest = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("the broken stream's manifest");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();
    let id = manifest.file_stem().unwrap().to_string_lossy().into_owned();

    let out = strata().args(["--json", "verify"]).run().failure(6);
    let report: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    let rows = report.as_array().unwrap();
    let broken = rows
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("the damaged manifest's backup is reported: {report}"));
    assert_eq!(broken["ok"], false);
    let problem = broken["problems"][0].as_str().unwrap();
    assert!(
        problem.contains(&format!("manifests/stream/broken/{id}.json")),
        "{problem}"
    );
    let kept: Vec<_> = rows.iter().filter(|r| r["ok"] == true).collect();
    assert_eq!(kept.len(), 1, "{report}");
}
