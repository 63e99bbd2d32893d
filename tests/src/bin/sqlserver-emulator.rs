//! `sqlserver-emulator`: runs the emulated SQL Server of Strata's tests on
//! 127.0.0.1 for manual trials of the SQL Server plugin, until Ctrl-C.
//!
//! ```text
//! sqlserver-emulator [--port 14330] [--user strata] [--password P]
//!                    [--server-name SQLEMU] [--utc-offset MINUTES]
//!                    [--trust-ca FILE.pem]... [--resolve HOST=127.0.0.1:PORT]...
//!                    [--database-size BYTES] [--not-sysadmin]
//! ```
//!
//! It prints its address and an ADO.NET connection string (what the
//! plugin's `connection` setting takes).

use std::net::SocketAddr;
use std::process::ExitCode;

use strata_e2e::sqlserver::{Emulator, EmulatorConfig};

const USAGE: &str = "usage: sqlserver-emulator [--port N] [--user NAME] [--password P] [--server-name NAME] \
[--utc-offset MINUTES] [--trust-ca FILE.pem]... [--resolve HOST=127.0.0.1:PORT]... [--database-size BYTES] [--not-sysadmin]";

/// Reads the command line into a configuration; `Err` holds the message for the user.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<EmulatorConfig, String> {
    let mut config = EmulatorConfig {
        port: 14330,
        ..EmulatorConfig::default()
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        if flag == "--not-sysadmin" {
            config.sysadmin = false;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |what: &str| format!("{flag} takes {what}, not '{value}'");
        match flag.as_str() {
            "--port" => config.port = value.parse().map_err(|_| number("a port number"))?,
            "--user" => config.user = value,
            "--password" => config.password = value,
            "--server-name" => config.server_name = value,
            "--utc-offset" => {
                config.utc_offset_minutes =
                    value.parse().map_err(|_| number("minutes east of UTC"))?
            }
            "--database-size" => {
                config.database_size = value.parse().map_err(|_| number("a size in bytes"))?
            }
            "--trust-ca" => {
                let pem = std::fs::read(&value)
                    .map_err(|e| format!("cannot read the CA certificate {value}: {e}"))?;
                config.trusted_ca_pem.push(pem);
            }
            "--resolve" => {
                let (host, addr) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--resolve takes HOST=127.0.0.1:PORT, not '{value}'"))?;
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|_| format!("--resolve takes HOST=127.0.0.1:PORT, not '{value}'"))?;
                config.resolve.push((host.to_string(), addr));
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let offset = config.utc_offset_minutes;
    let emulator = Emulator::start(config).await;
    println!("SQL Server emulator listening on {}", emulator.addr());
    println!("connection string: {}", emulator.connection_string());
    println!("server local time is UTC{offset:+} minutes; Ctrl-C stops it");
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn options_fill_the_configuration() {
        let config = parse_args(args(
            "--port 15000 --user sa --utc-offset -300 --resolve strata-blob.local=127.0.0.1:8443 --not-sysadmin",
        ))
        .unwrap();
        assert_eq!(config.port, 15000);
        assert_eq!(config.user, "sa");
        assert_eq!(config.utc_offset_minutes, -300);
        assert_eq!(
            config.resolve,
            vec![(
                "strata-blob.local".to_string(),
                "127.0.0.1:8443".parse().unwrap()
            )]
        );
        assert!(!config.sysadmin);
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        assert_eq!(
            parse_args(args("--port x")).unwrap_err(),
            "--port takes a port number, not 'x'"
        );
        assert!(
            parse_args(args("--resolve nohost"))
                .unwrap_err()
                .contains("HOST=127.0.0.1:PORT")
        );
        assert!(
            parse_args(args("--bogus 1"))
                .unwrap_err()
                .starts_with("unknown option --bogus")
        );
        assert!(
            parse_args(args("--trust-ca /nonexistent/ca.pem"))
                .unwrap_err()
                .contains("/nonexistent/ca.pem")
        );
    }
}
