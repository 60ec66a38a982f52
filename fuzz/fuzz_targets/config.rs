//! Configuration text as iamd reads it: an error or a configuration, never a panic.
#![no_main]
use aos_iam::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // `node.id_source = "command:…"` runs the command as the configuration is read: the
    // fuzzer is not to run what it makes up.
    if text.contains("command:") {
        return;
    }
    if let Err(e) = Config::from_sources(&[("fuzz.toml".to_string(), text.to_string())]) {
        let _ = e.to_string();
    }
});
