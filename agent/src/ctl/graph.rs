//! `weftctl graph`: the mesh in GraphViz DOT. Each segment is a
//! `subgraph cluster_*` whose leader is drawn bold with a double border;
//! bold edges are WireGuard tunnels between leaders, dotted edges are
//! direct links inside a segment, dashed edges go to external peers.

use std::fmt::Write as _;

use crate::topology::{Mesh, Segment, SegmentId};

/// A DOT quoted string: quotes and backslashes escaped, newlines as `\n`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn node_id(name: &str) -> String {
    quote(&format!("node/{name}"))
}

fn peer_id(name: &str) -> String {
    quote(&format!("peer/{name}"))
}

fn cluster_name(id: &SegmentId) -> String {
    match id {
        SegmentId::Location(l) => quote(&format!("cluster_location_{l}")),
        SegmentId::Node(n) => quote(&format!("cluster_node_{n}")),
    }
}

fn segment(out: &mut String, s: &Segment) {
    let _ = writeln!(out, "\tsubgraph {} {{", cluster_name(&s.id));
    let _ = writeln!(out, "\t\tlabel={};", quote(&s.id.to_string()));
    let _ = writeln!(out, "\t\tstyle=\"dashed,rounded\";");
    for (i, n) in s.nodes.iter().enumerate() {
        // Label lines as kgctl's: location, name, pod CIDR, private IP, and
        // for the leader its WireGuard IP and endpoint.
        let mut label = vec![s.id.to_string(), n.name.clone(), n.pod_cidr.to_string()];
        if let Some(p) = n.private_ip {
            label.push(p.addr().to_string());
        }
        let leader = i == s.leader;
        if leader {
            label.push(s.wireguard_ip.to_string());
            label.push(s.endpoint.to_string());
            label.push("(leader)".into());
        }
        let style = if leader {
            ", style=bold, peripheries=2"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\t\t{} [label={}, shape=ellipse{style}];",
            node_id(&n.name),
            quote(&label.join("\n"))
        );
    }
    let leader = &s.leader_node().name;
    for (i, n) in s.nodes.iter().enumerate() {
        if i != s.leader {
            let _ = writeln!(
                out,
                "\t\t{} -> {} [dir=both, style=dotted];",
                node_id(leader),
                node_id(&n.name)
            );
        }
    }
    let _ = writeln!(out, "\t}}");
}

/// The DOT text of the mesh.
pub fn dot(mesh: &Mesh) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"weft\" {{");
    let _ = writeln!(out, "\tlabel={};", quote(&mesh.settings.subnet.to_string()));
    let _ = writeln!(
        out,
        "\tlabelloc=t;\n\toutputorder=nodesfirst;\n\toverlap=false;"
    );
    for s in &mesh.segments {
        segment(&mut out, s);
    }
    let leaders: Vec<&str> = mesh
        .segments
        .iter()
        .map(|s| s.leader_node().name.as_str())
        .collect();
    for (i, a) in leaders.iter().enumerate() {
        for b in &leaders[i + 1..] {
            let _ = writeln!(
                out,
                "\t{} -> {} [dir=both, style=bold];",
                node_id(a),
                node_id(b)
            );
        }
    }
    if !mesh.peers.is_empty() {
        let _ = writeln!(
            out,
            "\tsubgraph \"cluster_peers\" {{\n\t\tlabel=\"peers\";\n\t\tstyle=\"dashed,rounded\";"
        );
        for p in &mesh.peers {
            let mut label = vec![p.name.clone()];
            if let Some(e) = &p.endpoint {
                label.push(e.to_string());
            }
            let _ = writeln!(
                out,
                "\t\t{} [label={}, shape=ellipse];",
                peer_id(&p.name),
                quote(&label.join("\n"))
            );
        }
        let _ = writeln!(out, "\t}}");
        for l in &leaders {
            for p in &mesh.peers {
                let _ = writeln!(
                    out,
                    "\t{} -> {} [dir=both, style=dashed];",
                    node_id(l),
                    peer_id(&p.name)
                );
            }
        }
    }
    let _ = writeln!(out, "}}");
    out
}
