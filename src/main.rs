//! The `postbox` binary: parses the command line and hands over to the library.

use clap::Parser;

#[tokio::main]
async fn main() {
    // Every long poll holds a socket: let `serve` (and `loadtest`'s pollers) use as many descriptors as
    // the hard limit allows rather than the usual soft 1 024.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let cli = postbox::cli::Cli::parse();
    match postbox::cli::dispatch(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
