//! What a node reports about itself in NodeInfo: CPUs, memory, partitions and OS.
//!
//! Read from /proc/cpuinfo, /proc/meminfo, statvfs(3) and /etc/os-release each time it is
//! asked for (rarely, and cheap), so a resized partition shows without a restart.

use crate::config::PartitionConfig;
use crate::proto::wire::{CpuInfo, PartitionInfo};
use std::collections::BTreeMap;

/// CPUs grouped by physical package. Kernels that give no `physical id` (most ARM boards)
/// are reported as one CPU whose cores and threads are the processors listed.
pub fn cpus_from(cpuinfo: &str) -> Vec<CpuInfo> {
    let mut packages: BTreeMap<String, CpuInfo> = BTreeMap::new();
    for block in cpuinfo.split("\n\n").filter(|b| b.contains("processor")) {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let id = field("physical id").unwrap_or_default();
        let model = field("model name")
            .or_else(|| field("Model"))
            .or_else(|| field("cpu model"))
            .unwrap_or_default();
        let cores = field("cpu cores").and_then(|c| c.parse().ok());
        let entry = packages.entry(id).or_insert_with(|| CpuInfo {
            model,
            cores: 0,
            threads: 0,
            architecture: std::env::consts::ARCH.to_string(),
        });
        entry.threads += 1;
        entry.cores = cores.unwrap_or(entry.threads);
    }
    packages.into_values().collect()
}

pub fn cpus() -> Vec<CpuInfo> {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| cpus_from(&t))
        .unwrap_or_default()
}

/// MemTotal, in bytes.
pub fn total_ram_from(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

pub fn total_ram() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| total_ram_from(&t))
        .unwrap_or(0)
}

/// Each configured partition with its total size; a path that cannot be read is reported
/// with size 0 (and logged) rather than hiding the partition.
pub fn partitions(configured: &[PartitionConfig]) -> Vec<PartitionInfo> {
    configured
        .iter()
        .map(|p| {
            let total_size = match nix::sys::statvfs::statvfs(&p.path) {
                Ok(s) => s.blocks() * s.fragment_size(),
                Err(e) => {
                    crate::log_warn!("partition {} ({}): statvfs: {e}", p.name, p.path.display());
                    0
                }
            };
            PartitionInfo {
                name: p.name.clone(),
                types: p.types.clone(),
                path: p.path.display().to_string(),
                total_size,
            }
        })
        .collect()
}

/// NAME and VERSION_ID (or VERSION) of os-release(5).
pub fn os_from(os_release: &str) -> (String, String) {
    let field = |k: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    (
        field("NAME").unwrap_or_else(|| "Linux".into()),
        field("VERSION_ID").or_else(|| field("VERSION")).unwrap_or_default(),
    )
}

pub fn os() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").or_else(|_| std::fs::read_to_string("/usr/lib/os-release"));
    os_from(&text.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_grouped_by_package() {
        let two_sockets = "processor\t: 0\nphysical id\t: 0\nmodel name\t: A\ncpu cores\t: 2\n\n\
                           processor\t: 1\nphysical id\t: 0\nmodel name\t: A\ncpu cores\t: 2\n\n\
                           processor\t: 2\nphysical id\t: 1\nmodel name\t: B\ncpu cores\t: 1\n";
        let c = cpus_from(two_sockets);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].model.as_str(), c[0].cores, c[0].threads), ("A", 2, 2));
        assert_eq!((c[1].model.as_str(), c[1].cores, c[1].threads), ("B", 1, 1));
        let arm = "processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\nBogoMIPS\t: 50\n\nHardware\t: X\n";
        let c = cpus_from(arm);
        assert_eq!((c.len(), c[0].cores, c[0].threads), (1, 2, 2));
    }

    #[test]
    fn memory_and_os_release_parse() {
        assert_eq!(total_ram_from("MemFree: 1 kB\nMemTotal:   2048 kB\n"), 2 * 1024 * 1024);
        assert_eq!(
            os_from("NAME=\"Poky\"\nVERSION_ID=5.0\n"),
            ("Poky".into(), "5.0".into())
        );
        assert_eq!(os_from(""), ("Linux".into(), String::new()));
    }
}
