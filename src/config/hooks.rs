//! `[hooks]` and `[alerts]`: the commands iamd runs at the steps of provisioning, and when
//! it tells someone a certificate is about to expire, the node is quarantined or its id
//! changed.

use super::reader::{argv, seconds, Reader};
use super::ConfigError;
use std::time::Duration;

/// How long a hook may run by default before it is stopped and its step fails.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    pub start: Option<Vec<String>>,
    pub disk_encryption: Option<Vec<String>>,
    pub finish: Option<Vec<String>>,
    pub deprovision: Option<Vec<String>>,
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            start: None,
            disk_encryption: None,
            finish: None,
            deprovision: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

/// Alerts (`[alerts]`): when certificates cross their thresholds, and who is told besides the
/// log and `SubscribeAlerts` subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    pub warning_days: u32,
    pub critical_days: u32,
    /// How often the current certificates are looked at (and at once when they change).
    pub interval: Duration,
    /// Run once per alert, the alert on its stdin as one JSON object (an LED, a diagnostic
    /// agent); within `hooks.timeout`.
    pub hook: Option<Vec<String>>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            warning_days: 30,
            critical_days: 7,
            interval: Duration::from_secs(3600),
            hook: None,
        }
    }
}

#[inline(never)]
pub(super) fn parse_hooks(root: &mut Reader) -> Result<Hooks, ConfigError> {
    let hooks = match root.sub("hooks")? {
        Some(mut h) => {
            let hooks = Hooks {
                start: argv(&mut h, "start")?,
                disk_encryption: argv(&mut h, "disk_encryption")?,
                finish: argv(&mut h, "finish")?,
                deprovision: argv(&mut h, "deprovision")?,
                timeout: match h.uint("timeout", 24 * 3600)? {
                    Some(0) => return Err(h.err("timeout", "must be at least 1 second")),
                    Some(t) => Duration::from_secs(t),
                    None => DEFAULT_HOOK_TIMEOUT,
                },
            };
            h.finish()?;
            hooks
        }
        None => Hooks::default(),
    };
    Ok(hooks)
}

#[inline(never)]
pub(super) fn parse_alerts(root: &mut Reader) -> Result<AlertsConfig, ConfigError> {
    let alerts = match root.sub("alerts")? {
        Some(mut a) => {
            let d = AlertsConfig::default();
            let warning_days = a.uint("warning_days", 3650)?.map_or(d.warning_days, |n| n as u32);
            let critical_days = a.uint("critical_days", 3650)?.map_or(d.critical_days, |n| n as u32);
            if critical_days > warning_days {
                return Err(a.err(
                    "critical_days",
                    format!("must not exceed warning_days ({warning_days})"),
                ));
            }
            let alerts = AlertsConfig {
                warning_days,
                critical_days,
                interval: seconds(&mut a, "interval", 24 * 3600, d.interval)?,
                hook: argv(&mut a, "hook")?,
            };
            a.finish()?;
            alerts
        }
        None => AlertsConfig::default(),
    };
    Ok(alerts)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::*;
    use std::time::Duration;

    #[test]
    fn hooks_and_alerts_are_commands_and_thresholds_in_order() {
        let c = load(&["[hooks]\nfinish = [\"/bin/true\", \"x\"]\ntimeout = 5\n[alerts]\nwarning_days = 10\ncritical_days = 2\nhook = [\"/bin/logger\"]\n"]).unwrap();
        assert_eq!(
            c.hooks.finish.as_deref(),
            Some(&["/bin/true".to_string(), "x".to_string()][..])
        );
        assert_eq!(c.hooks.timeout, Duration::from_secs(5));
        assert_eq!((c.alerts.warning_days, c.alerts.critical_days), (10, 2));
        assert_eq!(c.alerts.hook.as_deref(), Some(&["/bin/logger".to_string()][..]));
        assert_eq!(load(&[]).unwrap().alerts, AlertsConfig::default());
        for (text, key, reason) in [
            (
                "[alerts]\nwarning_days = 3\ncritical_days = 5\n",
                "alerts.critical_days",
                "must not exceed warning_days (3)",
            ),
            ("[hooks]\ntimeout = 0\n", "hooks.timeout", "at least 1 second"),
            (
                "[hooks]\ndeprovision = [\"\"]\n",
                "hooks.deprovision",
                "must name a command",
            ),
            ("[alerts]\ninterval = 0\n", "alerts.interval", "at least 1 second"),
        ] {
            let e = load(&[text]).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
    }
}
