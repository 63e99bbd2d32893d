//! `strata verify` on a vault whose manifest is damaged: the backup it
//! commits drops out of every listing, so a verify that only checks what
//! it lists would report a clean vault. It must name the manifest.

use std::path::PathBuf;

use strata_e2e::cli::Strata;
use strata_e2e::fixture::TestDir;

/// `strata --vault <dir>/vault --catalog <dir>/catalog.db`.
fn strata(dir: &TestDir) -> Strata {
    Strata::new()
        .args(["--vault", &dir.file_url("vault")])
        .arg("--catalog")
        .arg(dir.path("catalog.db"))
}

/// A new file vault in `dir` with one stream backup of each of `names`.
fn vault_with_streams(dir: &TestDir, names: &[&str]) {
    strata(dir).args(["vault", "init"]).run().success();
    for name in names {
        strata(dir)
            .args(["backup", "stream", name])
            .stdin(format!("the bytes of {name}").into_bytes())
            .run()
            .success();
    }
}

/// The manifest object of the stream backup of `name` (the only one).
fn manifest_of(dir: &TestDir, name: &str) -> PathBuf {
    std::fs::read_dir(dir.path(format!("vault/manifests/stream/{name}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap_or_else(|| panic!("the manifest of stream {name}"))
}

/// Two stream backups; one manifest is truncated. `verify` exits 6 (an
/// integrity finding), names the manifest's key and its backup, and still
/// verifies the other backup; `list` shows only the readable one.
#[test]
fn a_damaged_manifest_is_a_verify_finding() {
    let dir = TestDir::new("verify-damaged-manifest");
    vault_with_streams(&dir, &["kept", "broken"]);
    let manifest = manifest_of(&dir, "broken");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();
    let id = manifest.file_stem().unwrap().to_string_lossy().into_owned();

    let out = strata(&dir).args(["--json", "verify"]).run().failure(6);
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

/// Two stream backups' manifests swapped by hand (a new user's trial): the
/// index still lists both, and their parts verify by the cached manifests,
/// but the objects in the vault are each other's. `verify` reports each
/// backup once, as damaged, naming its manifest, and counts two backups;
/// `restore stream` refuses with exit 6 and a hint that fits a stream
/// restore (no `restore pg` option).
#[test]
fn swapped_manifests_are_reported_once_per_backup() {
    let dir = TestDir::new("verify-swapped-manifests");
    vault_with_streams(&dir, &["alpha", "beta"]);
    let (alpha, beta) = (&manifest_of(&dir, "alpha"), &manifest_of(&dir, "beta"));
    let (alpha_text, beta_text) = (std::fs::read(alpha).unwrap(), std::fs::read(beta).unwrap());
    std::fs::write(alpha, &beta_text).unwrap();
    std::fs::write(beta, &alpha_text).unwrap();

    let out = strata(&dir).arg("verify").run().failure(6);
    let text = out.stdout_text();
    assert!(
        !text.contains("\nok "),
        "no backup is both ok and damaged: {text}"
    );
    assert!(!text.starts_with("ok "), "{text}");
    assert!(text.contains("2 backup(s) verified, 2 damaged"), "{text}");
    for manifest in [alpha, beta] {
        let id = manifest.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(text.matches(&format!("DAMAGED {id}")).count(), 1, "{text}");
    }

    let out = strata(&dir)
        .args(["restore", "stream", "alpha", "--output"])
        .arg(dir.path("alpha.out"))
        .run()
        .failure(6);
    let said = out.stderr_text();
    assert!(said.contains("manifests/stream/alpha/"), "{said}");
    assert!(!said.contains("restore pg"), "{said}");
    assert!(said.contains("restore another backup by its id"), "{said}");
    assert!(!dir.path("alpha.out").exists(), "nothing is written");
}
