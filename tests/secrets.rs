//! No secret reaches a log or a file it does not belong in: a whole unit provisioned through
//! its main node with every daemon at the most verbose level, a permission secret issued and
//! used, then every log and every file outside the tokens, the user-PIN files and the test's
//! own password file searched for the password, each user PIN and the permission secret.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files_under(&p, out);
        } else if t.is_file() {
            out.push(p);
        }
    }
}

#[test]
fn no_password_pin_or_permission_secret_reaches_a_log_or_another_file() {
    let mut unit = Unit::new("secrets", 2);
    unit.start(true);
    unit.link_all_unix();
    unit.run_all(&["--expect-nodes", "3", "--wait", "20"]).ok();
    // A wrong password too: the refusal must not echo it.
    unit.main
        .provision_stdin(
            &["--node", &unit.secondaries[0].node_id(), "finish"],
            "wrong-guess-123\n",
        )
        .fails(4, "");
    let secret = unit
        .main
        .provision(&[
            "register-instance",
            "--item",
            "svc",
            "--subject",
            "subj",
            "--instance",
            "1",
            "--permission",
            "vis:read=yes",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(secret.len(), 32);
    unit.main
        .applet(
            "iam-certctl",
            &["-s", &unit.main.public(), "permissions", "vis"],
            Some(&format!("{secret}\n")),
        )
        .ok();
    unit.main
        .applet(
            "iam-certctl",
            &["-s", &unit.main.public(), "permissions", "vis"],
            Some("not-the-secret-000000000000000000\n"),
        )
        .fails(6, "");

    let mut secrets = vec![
        ("password".to_string(), PASSWORD.to_string()),
        ("wrong password".into(), "wrong-guess-123".into()),
        ("permission secret".into(), secret),
    ];
    let nodes: Vec<&Node> = std::iter::once(&unit.main).chain(unit.secondaries.iter()).collect();
    for n in &nodes {
        secrets.push((format!("user PIN of {}", n.node_id()), n.user_pin().trim().to_string()));
    }
    let mut searched = 0;
    for n in &nodes {
        let mut files = Vec::new();
        files_under(&n.dir, &mut files);
        for f in files {
            let allowed = f.starts_with(n.path("tokens")) || f == n.path("work/user-pin") || f == n.path("password");
            if allowed {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            for (what, s) in &secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "the {what} is in {}",
                    f.display()
                );
            }
            searched += 1;
        }
        // The logs are there and verbose: the search is not vacuous.
        assert!(n.log().contains("<7>"), "no debug lines in {}", n.dir.display());
    }
    assert!(searched >= 10, "only {searched} files searched");
    for i in 0..2 {
        assert!(unit.nodelink_log(i).contains("registered"));
    }
    // The search finds a secret where one is: the user PIN in its own file.
    let pin_file = std::fs::read(unit.main.path("work/user-pin")).unwrap();
    let pin = unit.main.user_pin();
    assert!(pin_file.windows(pin.trim().len()).any(|w| w == pin.trim().as_bytes()));
    // The user-PIN files are for iamd alone.
    for n in &nodes {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(n.path("work/user-pin")).unwrap().permissions());
        assert_eq!(
            mode & 0o077,
            0,
            "user PIN file of {} is readable by others",
            n.node_id()
        );
    }
}
