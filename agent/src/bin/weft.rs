fn main() -> anyhow::Result<()> {
    println!("weft: {} bytes of eBPF embedded", weft::datapath::EBPF_OBJECT.len());
    Ok(())
}
