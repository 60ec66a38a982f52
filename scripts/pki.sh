# A PKI as deployed, for the demos (sourced): a root CA kept offline and an issuing CA under
# it that signs the devices. make_pki DIR NAME makes DIR/ca.pem (the root, the only trust
# anchor a node is given), DIR/issuing.pem and DIR/issuing.key (what a factory station
# holds), with openssl, EC P-384; the root's key is deleted once the issuing CA is signed.
make_pki() {
    pki_dir=$1; pki_name=$2
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 3650 \
        -keyout "$pki_dir/root.key" -out "$pki_dir/ca.pem" -subj "/O=$pki_name/CN=$pki_name Root CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' \
        > "$pki_dir/issuing.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout "$pki_dir/issuing.key" \
        -out "$pki_dir/issuing.csr" -subj "/O=$pki_name/CN=$pki_name Issuing CA" 2>/dev/null
    openssl x509 -req -in "$pki_dir/issuing.csr" -CA "$pki_dir/ca.pem" -CAkey "$pki_dir/root.key" -days 1825 \
        -extfile "$pki_dir/issuing.ext" -out "$pki_dir/issuing.pem" 2>/dev/null
    # Offline from here on: nothing below signs with the root.
    rm -f "$pki_dir/root.key" "$pki_dir/issuing.csr" "$pki_dir/issuing.ext"
    openssl x509 -in "$pki_dir/ca.pem" -noout -subject
    openssl x509 -in "$pki_dir/issuing.pem" -noout -subject -issuer
}
