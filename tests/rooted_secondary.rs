//! A rooted secondary, and whatever signs for it, against the unit: a certificate for one
//! node that names another node of the unit (the main node, or another secondary) would be
//! accepted as that node on the links, so it is refused before it is signed, after it is
//! issued, and by the main node when it is applied (SECURITY.md, "Secondary nodes").

mod common;
use common::*;

fn unit_in_provisioning(name: &str) -> Unit {
    let mut unit = Unit::new(name, 2);
    // Secondary 0 is rooted: its iam module asks for the main node's name beside its own.
    let main = unit.main.node_id();
    let s0 = &mut unit.secondaries[0];
    let text = s0
        .config_text()
        .replace("id = \"iam\"\n", &format!("id = \"iam\"\nalt_names = [\"{main}\"]\n"));
    assert!(text.contains(&format!("alt_names = [\"{main}\"]")), "{text}");
    s0.config_override = Some(text);
    unit.start(true);
    unit.link_all_unix();
    unit
}

#[test]
fn a_secondary_asking_for_the_main_nodes_name_gets_no_certificate_and_the_others_are_provisioned() {
    let unit = unit_in_provisioning("rooted");
    let (s0, s1) = (unit.secondaries[0].node_id(), unit.secondaries[1].node_id());
    let out = unit.run_all(&["--expect-nodes", "3", "--wait", "20"]);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    // (The JSON output escapes the quotes of the message.)
    let all = all.replace("\\\"", "\"");
    assert!(
        all.contains(&format!(
            "the iam CSR for node \"{s0}\" names another node of the unit: \"{}\"",
            unit.main.node_id()
        )),
        "{all}"
    );
    // Nothing was signed for it: no iam certificate on the rooted secondary.
    assert!(
        unit.secondaries[0].list_certs().iter().all(|c| c["type"] != "iam"),
        "{:?}",
        unit.secondaries[0].list_certs()
    );
    // The honest secondary got its certificates.
    assert_eq!(unit.secondaries[1].status()["state"], "provisioned", "{s1}: {all}");
}

#[test]
fn a_certificate_naming_another_node_is_refused_by_the_main_node_whoever_signed_it() {
    let unit = unit_in_provisioning("rooted-apply");
    let s1 = unit.secondaries[1].node_id();
    let main_id = unit.main.node_id();
    let pw = unit.main.p("password");
    unit.main
        .provision(&["--node", &s1, "start", "--password-file", &pw])
        .ok();
    let csr = unit.main.p("s1-iam.csr");
    unit.main
        .provision(&["--node", &s1, "create-key", "iam", "--password-file", &pw, "-o", &csr])
        .ok();
    // A CA that copies what it is asked for, or adds names of its own: here it names the
    // main node, and the other secondary, beside s1.
    let s0 = unit.secondaries[0].node_id();
    let forged = rcgen_sign(&unit.main, &read(&csr), |p| {
        p.subject_alt_names = vec![
            rcgen::SanType::DnsName(s1.clone().try_into().unwrap()),
            rcgen::SanType::DnsName(main_id.clone().try_into().unwrap()),
            rcgen::SanType::DnsName(s0.clone().try_into().unwrap()),
        ];
    });
    let file = unit.main.p("forged.pem");
    std::fs::write(&file, forged + &read(unit.main.path("ca.pem"))).unwrap();
    let refused = unit
        .main
        .provision(&["--node", &s1, "apply", "iam", &file])
        .fails(8, "NamesAnotherNode");
    assert!(
        refused.stderr.contains(&format!("\"{main_id}\"")) && refused.stderr.contains(&format!("\"{s0}\"")),
        "{}",
        refused.stderr
    );
    assert!(unit.secondaries[1].list_certs().iter().all(|c| c["type"] != "iam"));
    // The main node's own certificate may not name a secondary either.
    unit.main.provision(&["start", "--password-file", &pw]).ok();
    let csr = unit.main.p("main-iam.csr");
    unit.main
        .provision(&["create-key", "iam", "--password-file", &pw, "-o", &csr])
        .ok();
    let forged = rcgen_sign(&unit.main, &read(&csr), |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName(s1.clone().try_into().unwrap())];
    });
    std::fs::write(&file, forged + &read(unit.main.path("ca.pem"))).unwrap();
    unit.main
        .provision(&["apply", "iam", &file])
        .fails(8, &format!("names another node of the unit: \"{s1}\""));
}
