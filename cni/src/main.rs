//! `sluice-cni`: the CNI plugin binary. Reads `CNI_*` and stdin, prints the result or the
//! error object on stdout, logs on stderr only.

use std::io::{Read, Write};

use sluice_cni::plugin::{self, Env};

fn main() {
    let env = Env::from_process();
    if env.command.is_empty() {
        eprintln!("{}", plugin::about());
        return;
    }
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err = sluice_cni::error::CniError::new(
            sluice_cni::error::Code::Io,
            format!("reading stdin: {e}"),
        );
        fail(err, plugin::LATEST.to_string());
    }
    match plugin::run(&env, &stdin) {
        Ok(Some(out)) => {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(out.as_bytes());
            let _ = o.write_all(b"\n");
        }
        Ok(None) => {}
        Err(e) => fail(e, plugin::version_hint(&stdin)),
    }
}

fn fail(mut e: sluice_cni::error::CniError, version: String) -> ! {
    if e.cni_version.is_empty() {
        e.cni_version = version;
    }
    eprintln!(
        "sluice-cni: {} failed: {e}",
        std::env::var("CNI_COMMAND").unwrap_or_default()
    );
    println!("{}", e.to_json());
    std::process::exit(1)
}
