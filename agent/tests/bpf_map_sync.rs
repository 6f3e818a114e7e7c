//! The agent's map syncs against real kernel maps: only differences are
//! written, removals make room before additions, and a topology that does
//! not fit is refused whole ([`MapFull`]) with the map left as it was.
//!
//! Needs root (CAP_BPF, CAP_SYS_ADMIN for the bpffs mount):
//! `cargo test -p weft --test bpf_map_sync -- --ignored` (run by `cargo xtask test`).

mod bpf_common;

use std::collections::BTreeMap;

use aya::EbpfLoader;
use bpf_common::BpfFs;
use weft::datapath::EBPF_OBJECT;
use weft::datapath::maps::{self, MapFull, RouteKey, Writes};
use weft_common::maps::{IPIP_SENDERS, IpipSender, ROUTES, Route};

/// Room for four routes and two senders: small enough to fill.
const ROUTES_CAP: u32 = 4;
const SENDERS_CAP: u32 = 2;

fn routes(prefixes: &[u8]) -> BTreeMap<RouteKey, Route> {
    prefixes
        .iter()
        .map(|&p| ((24, [10, 42, p, 0]), Route::wireguard(7)))
        .collect()
}

fn current(ebpf: &mut aya::Ebpf) -> Vec<RouteKey> {
    let trie: aya::maps::LpmTrie<_, [u8; 4], Route> =
        aya::maps::LpmTrie::try_from(ebpf.map_mut(ROUTES).unwrap()).unwrap();
    let mut keys: Vec<RouteKey> = trie
        .iter()
        .map(|r| r.map(|(k, _)| (k.prefix_len(), k.data())).unwrap())
        .collect();
    keys.sort();
    keys
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn full_maps_are_refused_whole_and_removals_make_room() {
    let fs = BpfFs::mount();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&fs.path)
        .map_max_entries(ROUTES, ROUTES_CAP)
        .map_max_entries(IPIP_SENDERS, SENDERS_CAP)
        .load(EBPF_OBJECT)
        .expect("loading the eBPF object");
    let map = ebpf.map_mut(ROUTES).unwrap();
    assert_eq!(maps::capacity(map).unwrap(), ROUTES_CAP);

    struct Step {
        name: &'static str,
        want: &'static [u8],
        writes: Option<Writes>,
        after: &'static [u8],
    }
    let steps = [
        Step {
            name: "fill the map",
            want: &[1, 2, 3, 4],
            writes: Some(Writes {
                inserted: 4,
                updated: 0,
                removed: 0,
            }),
            after: &[1, 2, 3, 4],
        },
        Step {
            name: "unchanged: no write",
            want: &[1, 2, 3, 4],
            writes: Some(Writes::default()),
            after: &[1, 2, 3, 4],
        },
        Step {
            // Inserting first would hit the full map.
            name: "at capacity, two replaced",
            want: &[1, 2, 5, 6],
            writes: Some(Writes {
                inserted: 2,
                updated: 0,
                removed: 2,
            }),
            after: &[1, 2, 5, 6],
        },
        Step {
            name: "one more than fits: refused, nothing written",
            want: &[1, 2, 5, 6, 7],
            writes: None,
            after: &[1, 2, 5, 6],
        },
    ];
    for s in steps {
        let map = ebpf.map_mut(ROUTES).unwrap();
        let r = maps::sync_routes(map, &routes(s.want));
        match (s.writes, r) {
            (Some(want), Ok(got)) => assert_eq!(got, want, "{}", s.name),
            (None, Err(e)) => {
                let full = e
                    .downcast_ref::<MapFull>()
                    .unwrap_or_else(|| panic!("{}: not a MapFull: {e:#}", s.name));
                assert_eq!(
                    (full.map.as_str(), full.capacity, full.needed),
                    (ROUTES, ROUTES_CAP, s.want.len()),
                    "{}",
                    s.name
                );
                let msg = e.to_string();
                assert!(
                    msg.contains("WEFT_ROUTES holds at most 4 entries") && msg.contains("needs 5"),
                    "{}: {msg}",
                    s.name
                );
            }
            (want, got) => panic!("{}: wanted {want:?}, got {got:?}", s.name),
        }
        let want: Vec<RouteKey> = routes(s.after).into_keys().collect();
        assert_eq!(current(&mut ebpf), want, "{}", s.name);
    }

    // A hash map the same way.
    let sender = |last: u8| {
        (
            [192, 168, 1, last],
            IpipSender {
                ifindex: 2,
                local: [192, 168, 1, 1],
            },
        )
    };
    let map = ebpf.map_mut(IPIP_SENDERS).unwrap();
    let two: BTreeMap<_, _> = [sender(10), sender(11)].into();
    assert_eq!(
        maps::sync_hash(map, IPIP_SENDERS, &two).unwrap().inserted,
        2
    );
    let swapped: BTreeMap<_, _> = [sender(10), sender(12)].into();
    let w = maps::sync_hash(map, IPIP_SENDERS, &swapped).unwrap();
    assert_eq!((w.inserted, w.removed), (1, 1));
    let three: BTreeMap<_, _> = [sender(10), sender(12), sender(13)].into();
    let e = maps::sync_hash(map, IPIP_SENDERS, &three).unwrap_err();
    assert!(e.downcast_ref::<MapFull>().is_some(), "{e:#}");
}
