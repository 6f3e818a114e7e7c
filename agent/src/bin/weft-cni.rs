//! `weft-cni`: Weft's chained CNI plugin (see `weft::cni::plugin`). The
//! container runtime runs it after `bridge`, with the network configuration
//! on stdin and the command in `CNI_COMMAND`.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = weft::cni::plugin::version_of(&stdin);
    let result = match read {
        Ok(_) => weft::cni::plugin::Env::from_vars(|k| std::env::var(k).ok())
            .and_then(|env| weft::cni::plugin::run(&stdin, &env, &ifindex)),
        Err(e) => Err(weft::cni::plugin::CniError {
            code: weft::cni::plugin::ErrorCode::Io,
            msg: "weft-cni: cannot read the network configuration from stdin".into(),
            details: e.to_string(),
        }),
    };
    let mut out = std::io::stdout().lock();
    match result {
        Ok(s) => {
            let _ = out.write_all(s.as_bytes());
        }
        Err(e) => {
            let _ = out.write_all(e.to_json(&version).as_bytes());
            eprintln!("weft-cni: {e}");
            std::process::exit(1);
        }
    }
}

/// The index of interface `name` in this (the host's) network namespace.
fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
