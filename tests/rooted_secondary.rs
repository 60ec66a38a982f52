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

/// The iam certificate of `node`, as `list` shows it.
fn iam_serial(node: &Node) -> serde_json::Value {
    node.list_certs()
        .into_iter()
        .find(|c| c["type"] == "iam" && c["current"] == true)
        .map(|c| c["serial"].clone())
        .unwrap_or_default()
}

#[test]
fn what_a_secondary_asks_beyond_the_factorys_profile_is_not_signed_nor_taken_from_a_signer_that_gives_it() {
    let mut unit = Unit::new("profile", 2);
    // Secondary 0 asks for a name that is not its own on its link identity.
    let s0 = &mut unit.secondaries[0];
    let text = s0
        .config_text()
        .replace("id = \"iam\"\n", "id = \"iam\"\nalt_names = [\"cloud.example.com\"]\n");
    s0.config_override = Some(text);
    unit.start(true);
    unit.link_all_unix();
    let (s0, s1) = (unit.secondaries[0].node_id(), unit.secondaries[1].node_id());
    let out = unit.run_all(&["--expect-nodes", "3", "--wait", "20"]);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr).replace("\\\"", "\"");
    assert!(
        all.contains(&format!(
            "the iam CSR for node \"{s0}\" goes beyond the factory's profile of iam (a secondary's link identity): \
             the DNS name \"cloud.example.com\""
        )),
        "{all}"
    );
    assert!(unit.secondaries[0].list_certs().iter().all(|c| c["type"] != "iam"));
    assert_eq!(unit.secondaries[1].status()["state"], "provisioned", "{all}");

    // A signing command that gives a secondary's link identity serverAuth (as a CA that
    // adds usages of its own does): the certificate is refused, the node keeps its own.
    let d = unit.main.dir.display();
    std::fs::write(
        unit.main.path("server.ext"),
        "extendedKeyUsage = clientAuth, serverAuth\nbasicConstraints = CA:FALSE\n",
    )
    .unwrap();
    let generous = format!(
        "f=$(mktemp -p {d}); cat > $f.csr; openssl x509 -req -in $f.csr -CA {d}/ca.pem -CAkey {d}/ca.key -days 30 \
         -extfile {d}/server.ext 2>/dev/null"
    );
    let before = iam_serial(&unit.secondaries[1]);
    let pw = unit.main.p("password");
    let socket = unit.main.protected();
    let renew = |extra: &[&str]| {
        let mut args = vec!["-s", &socket[..], "renew", "iam", "--node", &s1, "--password-file", &pw];
        args.extend(extra);
        unit.main.applet("iam-certctl", &args, None)
    };
    renew(&["--sign-cmd", &generous]).fails(
        8,
        &format!(
            "the iam certificate the signer issued for node \"{s1}\" goes beyond the factory's profile of iam \
             (a secondary's link identity): the usage serverAuth"
        ),
    );
    assert_eq!(iam_serial(&unit.secondaries[1]), before, "nothing was applied");

    // The factory's profile file names what this unit's nodes may have: the name is
    // allowed now, and the rooted secondary is provisioned with it and no more.
    std::fs::write(
        unit.main.path("profile.toml"),
        "[types.iam]\nextended_key_usage = [\"clientAuth\", \"serverAuth\"]\nalt_names = [\"{node}\", \"cloud.example.com\"]\n",
    )
    .unwrap();
    let profile = unit.main.p("profile.toml");
    unit.main
        .run_flow_on(Some(&s0), &["--deprovision-first", "--profile", &profile])
        .ok();
    let s0_node = &unit.secondaries[0];
    let cert = s0_node
        .list_certs()
        .into_iter()
        .find(|c| c["type"] == "iam" && c["current"] == true)
        .expect("the iam certificate of the rooted secondary");
    let file = s0_node.p("iam.issued.pem");
    s0_node.export_cert(cert["cert_url"].as_str().unwrap(), &file);
    let text = sh(&format!(
        "openssl x509 -in {file} -noout -ext subjectAltName,extendedKeyUsage"
    ))
    .ok();
    assert!(
        text.stdout.contains("DNS:cloud.example.com") && !text.stdout.contains("Server Authentication"),
        "{}",
        text.stdout
    );
    // The file still never gives a secondary's link identity serverAuth.
    renew(&["--sign-cmd", &generous, "--profile", &profile]).fails(8, "the usage serverAuth");
}
