//! The x509-limbo device subset (tests/data/x509-limbo, see its README) through the validator that
//! ApplyCert uses. Every case must agree with its expected result, except the deviations
//! listed below, each with its reason; the list may only shrink.

use aos_iam::config::Eku;
use aos_iam::pki::x509::{parse_chain_pem, validate_chain};
use rustls_pki_types::UnixTime;
use serde_json::Value;

/// Cases where our verdict differs from x509-limbo's, and why.
const DEVIATIONS: &[(&str, &str)] = &[
    (
        "pathlen::validation-ignores-pathlen-in-leaf",
        "the leaf is a CA certificate: the device policy refuses CA leaves, as x509-limbo itself \
         expects for webpki::ee-basicconstraints-ca",
    ),
    (
        "pathlen::self-issued-certs-pathlen",
        "rustls-webpki does not build this path through a self-issued intermediate \
         (InvalidSignatureForPublicKey); a device chain does not re-issue its own intermediate",
    ),
    (
        "rfc5280::aki::cross-signed-root-missing-aki",
        "an anchor that is cross-signed but has no authority key identifier is accepted: x509-limbo \
         calls the rule ambiguous, and enforcing it would refuse the valid cve::cve-2024-0567 graph",
    ),
    (
        "webpki::eku::ee-without-eku",
        "a module that requires no extended key usage accepts a leaf without the extension; a module \
         that requires one refuses such a leaf (RequiredEkuNotFound, tested in tests/provisioning.rs)",
    ),
];

fn limbo_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/x509-limbo/device-subset.json")
}

fn pems(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

fn verdict(case: &Value) -> Result<(), String> {
    let leaf = case["peer_certificate"].as_str().unwrap_or_default();
    let mut chain_pem = leaf.to_string();
    chain_pem.push('\n');
    chain_pem.push_str(&pems(&case["untrusted_intermediates"]));
    let chain = parse_chain_pem(&chain_pem).map_err(|e| e.to_string())?;
    let roots = parse_chain_pem(&pems(&case["trusted_certs"])).map_err(|e| e.to_string())?;
    let time = match case["validation_time"].as_str() {
        Some(t) => {
            let t =
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).expect("RFC 3339 time");
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
        }
        None => UnixTime::now(),
    };
    let ekus: Vec<Eku> = case["extended_key_usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            Eku::ALL
                .iter()
                .find(|(name, _)| Some(*name) == n.as_str())
                .map(|(_, e)| *e)
                .expect("known EKU")
        })
        .collect();
    validate_chain(&chain, &roots, &ekus, time).map_err(|e| e.to_string())
}

#[test]
fn x509_limbo_device_subset_agrees_except_listed_deviations() {
    let data: Value =
        serde_json::from_slice(&std::fs::read(limbo_path()).expect("x509-limbo data beside the repo")).unwrap();
    let cases = data["testcases"].as_array().unwrap();
    assert_eq!(cases.len(), 95);
    let mut unexpected = Vec::new();
    let mut deviating = Vec::new();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let expected_ok = case["expected_result"] == "SUCCESS";
        let got = verdict(case);
        let agrees = got.is_ok() == expected_ok;
        let listed = DEVIATIONS.iter().any(|(d, _)| *d == id);
        if !agrees {
            deviating.push(id);
        }
        if agrees == listed {
            unexpected.push(format!(
                "{id}: expected {}, got {:?}{}",
                case["expected_result"],
                got,
                if listed {
                    " (listed as a deviation but now agrees: remove it from DEVIATIONS)"
                } else {
                    ""
                }
            ));
        }
    }
    println!(
        "x509-limbo: {} of {} agree; {} listed deviations",
        cases.len() - deviating.len(),
        cases.len(),
        DEVIATIONS.len()
    );
    assert!(
        unexpected.is_empty(),
        "{} unexpected verdicts:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}
