//! The node's id from where it lives: the hardware (DMI, the device tree's serial number,
//! the CPU serial), a file, a command, or `/etc/machine-id` where that is named. A reflash
//! makes a new machine-id, and a read-only root makes a fresh one at each boot; the
//! hardware's serial survives both. Every value is normalised (NUL bytes and surrounding
//! whitespace dropped) and refused when empty or a placeholder firmware leaves in place
//! ("To be filled by O.E.M.", all zeros).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where DMI, the device tree and the CPU's description are read: `/` but in tests.
pub const ROOT: &str = "/";

/// The sources tried, in order, when the configuration names none.
pub const DEFAULT_SOURCES: [&str; 4] = ["dmi:product_serial", "dmi:product_uuid", "devicetree", "cpuinfo"];

/// How long an id command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The DMI fields a node id may come from (`/sys/class/dmi/id/FIELD`).
const DMI_FIELDS: [&str; 3] = ["product_serial", "product_uuid", "board_serial"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// `dmi:FIELD`: product_serial, product_uuid or board_serial.
    Dmi(&'static str),
    /// `devicetree`: the device tree's `serial-number`.
    DeviceTree,
    /// `cpuinfo`: the `Serial` line of `/proc/cpuinfo` (ARM SoCs).
    CpuInfo,
    /// `file:PATH`: the whole text of a file.
    File(PathBuf),
    /// `command:PROGRAM ARGS…`: what a program prints (split on whitespace).
    Command(Vec<String>),
    /// `machine-id`: `/etc/machine-id`, only where it is named.
    MachineId,
}

impl IdSource {
    /// A source as the configuration names it, or why it is not one.
    pub fn parse(s: &str) -> Result<IdSource, String> {
        let bad = || {
            format!(
                "\"{s}\" is not an id source: dmi:product_serial, dmi:product_uuid, dmi:board_serial, \
                 devicetree, cpuinfo, machine-id, file:PATH or command:PROGRAM ARGS"
            )
        };
        Ok(match s.split_once(':') {
            Some(("dmi", field)) => IdSource::Dmi(DMI_FIELDS.into_iter().find(|f| *f == field).ok_or_else(bad)?),
            Some(("file", path)) if path.starts_with('/') => IdSource::File(PathBuf::from(path)),
            Some(("file", _)) => return Err(format!("\"{s}\": the file must be an absolute path")),
            Some(("command", line)) => {
                let argv: Vec<String> = line.split_whitespace().map(str::to_string).collect();
                if !argv.first().is_some_and(|p| p.starts_with('/')) {
                    return Err(format!("\"{s}\": the command must start with an absolute path"));
                }
                IdSource::Command(argv)
            }
            None if s == "devicetree" => IdSource::DeviceTree,
            None if s == "cpuinfo" => IdSource::CpuInfo,
            None if s == "machine-id" => IdSource::MachineId,
            _ => return Err(bad()),
        })
    }

    /// The node id this source gives, read under `root` (`/` but in tests), or why none.
    pub fn read(&self, root: &Path) -> Result<String, String> {
        let under = |p: &str| root.join(p.trim_start_matches('/'));
        let file = |path: PathBuf| std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
        let raw = match self {
            IdSource::Dmi(field) => file(under(&format!("/sys/class/dmi/id/{field}")))?,
            IdSource::DeviceTree => file(under("/sys/firmware/devicetree/base/serial-number"))
                .or_else(|_| file(under("/proc/device-tree/serial-number")))?,
            IdSource::CpuInfo => {
                let text = String::from_utf8_lossy(&file(under("/proc/cpuinfo"))?).into_owned();
                text.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim() == "Serial")
                    .map(|(_, v)| v.as_bytes().to_vec())
                    .ok_or("/proc/cpuinfo has no Serial line")?
            }
            IdSource::File(path) => file(path.clone())?,
            IdSource::Command(argv) => {
                let mut cmd = std::process::Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                let what = format!("id command {}", argv[0]);
                let done = crate::sys::command::run(cmd, &what, None, 4096, COMMAND_TIMEOUT).map_err(|e| e.message)?;
                if !done.status.success() {
                    return Err(format!("{what} failed ({}): {}", done.status, done.stderr));
                }
                done.stdout
            }
            IdSource::MachineId => file(under("/etc/machine-id"))?,
        };
        normalise(&raw)
    }
}

impl std::fmt::Display for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            IdSource::Dmi(field) => write!(f, "dmi:{field}"),
            IdSource::DeviceTree => f.write_str("devicetree"),
            IdSource::CpuInfo => f.write_str("cpuinfo"),
            IdSource::File(p) => write!(f, "file:{}", p.display()),
            IdSource::Command(argv) => write!(f, "command:{}", argv.join(" ")),
            IdSource::MachineId => f.write_str("machine-id"),
        }
    }
}

/// The first of `sources` that gives an id: (the id, its source), or every source's reason.
pub fn first(sources: &[IdSource], root: &Path) -> Result<(String, IdSource), String> {
    let mut why = Vec::new();
    for s in sources {
        match s.read(root) {
            Ok(id) => return Ok((id, s.clone())),
            Err(e) => why.push(format!("{s}: {e}")),
        }
    }
    Err(why.join("; "))
}

/// A value as a node id: NUL bytes (a device tree string's end) and surrounding whitespace
/// dropped; refused when empty, not printable ASCII, or a placeholder.
pub fn normalise(raw: &[u8]) -> Result<String, String> {
    let text: Vec<u8> = raw.iter().copied().filter(|b| *b != 0).collect();
    let text = std::str::from_utf8(&text).map_err(|_| "not text".to_string())?.trim();
    if text.is_empty() {
        return Err("empty".into());
    }
    if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("not printable ASCII".into());
    }
    if placeholder(text) {
        return Err(format!("\"{text}\" is a placeholder, not a serial"));
    }
    Ok(text.to_string())
}

/// What firmware leaves where a serial or UUID was never set.
fn placeholder(text: &str) -> bool {
    const KNOWN: [&str; 14] = [
        "to be filled by o.e.m.",
        "to be filled by oem",
        "default string",
        "not specified",
        "not applicable",
        "not available",
        "none",
        "n/a",
        "system serial number",
        "chassis serial number",
        "base board serial number",
        "serial number",
        "0123456789",
        "123456789",
    ];
    let lower = text.to_ascii_lowercase();
    let same = |c: char| lower.chars().all(|x| x == c || x == '-' || x == ' ');
    KNOWN.contains(&lower.as_str()) || same('0') || same('f') || same('x')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_normalised_and_placeholders_refused() {
        assert_eq!(normalise(b"ABC123\0").unwrap(), "ABC123");
        assert_eq!(normalise(b"  0000000012ab34cd\n").unwrap(), "0000000012ab34cd");
        for bad in [
            &b""[..],
            b"\0\0",
            b" \n",
            b"To be filled by O.E.M.",
            b"Default string",
            b"00000000-0000-0000-0000-000000000000",
            b"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            b"0",
            b"ab\x01cd",
            b"\xff\xfe",
        ] {
            assert!(normalise(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sources_parse_and_read_under_a_root() {
        let root = std::env::temp_dir().join(format!("aos-iam-hwid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in [
            ("sys/class/dmi/id/product_serial", &b"To be filled by O.E.M.\n"[..]),
            (
                "sys/class/dmi/id/product_uuid",
                b"4c4c4544-0042-3510-8050-b7c04f4e3232\n",
            ),
            ("proc/device-tree/serial-number", b"SN-DT-77\0"),
            (
                "proc/cpuinfo",
                b"processor\t: 0\nflags\t: serialize\nSerial\t\t: 10000000abcdef01\n",
            ),
            ("etc/machine-id", b"6f1c0a5e9d2b4c3a8e7f6d5c4b3a2918\n"),
        ] {
            std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
            std::fs::write(root.join(path), text).unwrap();
        }
        let read = |s: &str| IdSource::parse(s).unwrap().read(&root);
        assert!(read("dmi:product_serial").unwrap_err().contains("placeholder"));
        assert_eq!(
            read("dmi:product_uuid").unwrap(),
            "4c4c4544-0042-3510-8050-b7c04f4e3232"
        );
        assert!(read("dmi:board_serial").unwrap_err().contains("No such file"));
        assert_eq!(read("devicetree").unwrap(), "SN-DT-77");
        assert_eq!(read("cpuinfo").unwrap(), "10000000abcdef01");
        assert_eq!(read("machine-id").unwrap(), "6f1c0a5e9d2b4c3a8e7f6d5c4b3a2918");
        // The first source that gives an id wins; when none does, each says why.
        let sources: Vec<_> = DEFAULT_SOURCES.iter().map(|s| IdSource::parse(s).unwrap()).collect();
        let (id, from) = first(&sources, &root).unwrap();
        assert_eq!(
            (id.as_str(), from.to_string().as_str()),
            ("4c4c4544-0042-3510-8050-b7c04f4e3232", "dmi:product_uuid")
        );
        let e = first(&sources[..1], &root).unwrap_err();
        assert!(e.starts_with("dmi:product_serial: "), "{e}");
        let cmd = IdSource::parse("command:/bin/echo  SER-42 ").unwrap();
        assert_eq!(cmd.read(&root).unwrap(), "SER-42");
        assert!(IdSource::parse("command:/bin/false")
            .unwrap()
            .read(&root)
            .unwrap_err()
            .contains("failed"));
        for bad in ["dmi:bios_vendor", "serial", "file:relative", "command:echo x", ""] {
            assert!(IdSource::parse(bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
