//! The repository stands on its own: no tracked file reads or names a path outside it (the
//! reading room a checkout was made beside), so a plain clone builds and tests.

#[test]
fn nothing_in_the_repository_refers_to_a_path_outside_it() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("git")
        .args(["-C", root, "ls-files", "-z"])
        .output()
        .expect("git, to list the tracked files");
    assert!(
        out.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Spelt in pieces, so that this file does not name them itself.
    let outside = [
        ["..", "/shared"].concat(),
        ["shared/", "testdata"].concat(),
        ["shared/", "notes"].concat(),
    ];
    let mut found = Vec::new();
    for file in out.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let path = std::path::Path::new(root).join(String::from_utf8_lossy(file).as_ref());
        let Ok(text) = std::fs::read(&path) else { continue };
        let text = String::from_utf8_lossy(&text);
        for needle in &outside {
            for (n, line) in text.lines().enumerate().filter(|(_, l)| l.contains(needle.as_str())) {
                found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "paths outside the repository:\n{}", found.join("\n"));
}
