//! What kube-proxy (iptables mode) installs on every node for a ClusterIP
//! Service, so that the end-to-end tests exercise Services the way a
//! cluster does. Weft itself installs no iptables rule; the test bed plays
//! kube-proxy here.
//!
//! The rules are those of `kube-proxy --proxy-mode iptables` (1.2x), with
//! its chain names: `KUBE-SERVICES` from PREROUTING and OUTPUT (nat),
//! `KUBE-SVC-*` choosing an endpoint with `-m statistic --mode random
//! --probability 1/n, 1/(n-1), …`, `KUBE-SEP-*` DNATing to it (and marking
//! hairpin traffic, an endpoint calling its own Service), `KUBE-MARK-MASQ`
//! for traffic from outside the cluster CIDR, `KUBE-POSTROUTING`
//! masquerading what is marked, and `KUBE-FORWARD` (filter) accepting
//! marked and RELATED,ESTABLISHED traffic and dropping conntrack INVALID.

use anyhow::{Context, Result};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;

use super::{Ipv4Net, Node};

/// `KUBE-MARK-MASQ`'s bit (kube-proxy's `--iptables-masquerade-bit` 14).
const MASQ_MARK: &str = "0x4000/0x4000";

/// A ClusterIP Service: one port, TCP or UDP, and its endpoints.
#[derive(Clone, Debug)]
pub struct Service {
    /// Namespace/name, as kube-proxy's comments show it.
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub port: u16,
    /// The endpoints' addresses (the backend pods) and their target port.
    pub endpoints: Vec<Ipv4Addr>,
    pub target_port: u16,
}

impl Service {
    /// `KUBE-SVC-` and 16 characters of a hash of the service port, as
    /// kube-proxy names it (its hash is base32 of a SHA-256; any stable
    /// one will do, within iptables' 28 characters).
    pub fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", hash16(&[&self.name, self.protocol]))
    }

    /// `KUBE-SEP-` and 16 characters of a hash of the service port and endpoint.
    pub fn sep_chain(&self, i: usize) -> String {
        let ep = self.endpoints[i].to_string();
        format!("KUBE-SEP-{}", hash16(&[&self.name, self.protocol, &ep]))
    }
}

/// 16 uppercase hex digits of FNV-1a over `parts`.
fn hash16(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.join("/").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// The `iptables-restore --noflush` input kube-proxy's sync would amount to
/// on a node of a cluster whose pods are in `cluster_cidr`.
pub fn rules(services: &[Service], cluster_cidr: Ipv4Net) -> String {
    let mut nat = vec![
        "*nat".to_string(),
        ":KUBE-SERVICES - [0:0]".into(),
        ":KUBE-MARK-MASQ - [0:0]".into(),
        ":KUBE-POSTROUTING - [0:0]".into(),
        r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
            .into(),
        r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.into(),
        r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#
            .into(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {}", &MASQ_MARK[..6]),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {}", &MASQ_MARK[..6]),
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully"#.into(),
    ];
    for s in services {
        let svc = s.svc_chain();
        let (p, ip, port) = (s.protocol, s.cluster_ip, s.port);
        let comment = format!("{}:{p} cluster IP", s.name);
        nat.push(format!(":{svc} - [0:0]"));
        nat.push(format!(
            r#"-A KUBE-SERVICES -d {ip}/32 -p {p} -m comment --comment "{comment}" -m {p} --dport {port} -j {svc}"#
        ));
        // Traffic to the ClusterIP from outside the pod network is masqueraded.
        nat.push(format!(
            r#"-A {svc} ! -s {cluster_cidr} -d {ip}/32 -p {p} -m comment --comment "{comment}" -m {p} --dport {port} -j KUBE-MARK-MASQ"#
        ));
        let n = s.endpoints.len();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let sep = s.sep_chain(i);
            nat.push(format!(":{sep} - [0:0]"));
            let left = n - i;
            if left > 1 {
                nat.push(format!(
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / left as f64
                ));
            } else {
                nat.push(format!("-A {svc} -j {sep}"));
            }
            // Hairpin: an endpoint reaching itself through the Service.
            nat.push(format!("-A {sep} -s {ep}/32 -j KUBE-MARK-MASQ"));
            nat.push(format!(
                "-A {sep} -p {p} -m {p} -j DNAT --to-destination {ep}:{}",
                s.target_port
            ));
        }
    }
    nat.push("COMMIT".into());
    let filter = [
        "*filter".to_string(),
        ":KUBE-FORWARD - [0:0]".into(),
        r#"-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD"#.into(),
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".into(),
        format!(
            r#"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK} -j ACCEPT"#
        ),
        r#"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"#.into(),
        "COMMIT".into(),
    ];
    let mut out = nat.join("\n");
    out.push('\n');
    out.push_str(&filter.join("\n"));
    out.push('\n');
    out
}

impl Node {
    /// Installs the rules kube-proxy would for `services` in this node's
    /// namespace (they go with the namespace at teardown).
    pub fn install_kube_proxy_rules(
        &self,
        services: &[Service],
        cluster_cidr: Ipv4Net,
    ) -> Result<()> {
        let input = rules(services, cluster_cidr);
        let mut child = self
            .cmd("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting iptables-restore")?;
        child
            .stdin
            .take()
            .context("iptables-restore's stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "iptables-restore in {} failed: {}\ninput:\n{input}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn svc(endpoints: &[[u8; 4]]) -> Service {
        Service {
            name: "default/echo".into(),
            cluster_ip: Ipv4Addr::new(10, 43, 0, 10),
            protocol: "udp",
            port: 53,
            endpoints: endpoints.iter().map(|e| Ipv4Addr::from(*e)).collect(),
            target_port: 5353,
        }
    }

    #[test]
    fn endpoints_are_chosen_with_kube_proxys_probabilities() {
        let r = rules(
            &[svc(&[[10, 42, 0, 3], [10, 42, 1, 3], [10, 42, 2, 3]])],
            "10.42.0.0/16".parse().unwrap(),
        );
        let s = svc(&[[10, 42, 0, 3], [10, 42, 1, 3], [10, 42, 2, 3]]);
        let (c, seps) = (s.svc_chain(), [0, 1, 2].map(|i| s.sep_chain(i)));
        assert!(c.len() <= 28 && seps.iter().all(|c| c.len() <= 28));
        assert_eq!(BTreeSet::from(seps.clone()).len(), 3);
        let svc_rules: Vec<String> = r
            .lines()
            .filter(|l| l.starts_with(&format!("-A {c} ")))
            .map(|l| l.replace(&c, "SVC"))
            .collect();
        assert_eq!(
            svc_rules,
            [
                r#"-A SVC ! -s 10.42.0.0/16 -d 10.43.0.10/32 -p udp -m comment --comment "default/echo:udp cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ"#.to_string(),
                format!("-A SVC -m statistic --mode random --probability 0.33333333333 -j {}", seps[0]),
                format!("-A SVC -m statistic --mode random --probability 0.50000000000 -j {}", seps[1]),
                format!("-A SVC -j {}", seps[2]),
            ]
        );
        assert!(r.contains(&format!(
            "-A {} -p udp -m udp -j DNAT --to-destination 10.42.1.3:5353",
            seps[1]
        )));
        assert!(r.contains(&format!("-A {} -s 10.42.1.3/32 -j KUBE-MARK-MASQ", seps[1])));
        // Both tables, each committed; the hooks into the built-in chains.
        assert_eq!(r.matches("COMMIT").count(), 2);
        for hook in [
            "-A PREROUTING ",
            "-A OUTPUT ",
            "-A POSTROUTING ",
            "-A FORWARD ",
        ] {
            assert_eq!(r.matches(hook).count(), 1, "{hook}");
        }
    }
}
