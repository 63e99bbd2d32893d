//! `hdbbackint`: SAP HANA's Backint agent for Strata. See the library docs.

fn main() {
    let invocation = strata_backint::args::Invocation::parse(std::env::args_os().skip(1));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hdbbackint: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(strata_backint::run(invocation));
    // Exit at once: a pipe open that HANA never answered may still hold a
    // blocking thread, which must not keep the process alive.
    std::process::exit(i32::from(code));
}
