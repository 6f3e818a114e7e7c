//! rtnetlink helpers shared by the reconcilers that talk to the kernel
//! (WireGuard's links, the routes): in a module of their own so that those
//! reconcilers need not import one another.

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::link::LinkMessage;

/// Positive errno of a netlink error reply, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()).filter(|&c| c > 0),
        _ => None,
    }
}

/// The link called `name`, if any.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut s = h.link().get().match_name(name.to_owned()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The link with index `index`, if any.
pub async fn link_by_index(
    h: &Handle,
    index: u32,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut s = h.link().get().match_index(index).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}
