//! One agent run, from the command line to the exit code.

use std::io::Read;
use std::sync::Arc;

use strata_core::Error;
use strata_core::lifecycle::Host;
use strata_core::vault::Vault;
use tokio::sync::watch;

use crate::agent::{Agent, one_line};
use crate::args::{Function, Invocation};
use crate::params::Params;
use crate::protocol::{ApiVersion, InputFile, InputLine, OutputLine};
use crate::report::{Logger, Output};
use crate::versions::VersionStore;

/// This agent's product name and version, as written in `#SOFTWAREID`.
pub const PRODUCT: &str = concat!("Strata hdbbackint ", env!("CARGO_PKG_VERSION"));

/// The Strata configuration used when HANA passes no parameter file.
const DEFAULT_STRATA_CONFIG: &str = strata_core::config::DEFAULT_PATH;

/// The `#SOFTWAREID` line for a conversation in `version`.
pub fn software_id(version: ApiVersion) -> OutputLine {
    OutputLine::SoftwareId {
        version,
        product: PRODUCT.to_owned(),
    }
}

/// The result fields that identify an input line in an `#ERROR`.
fn error_fields(function: Option<Function>, line: &InputLine) -> Vec<String> {
    match line {
        InputLine::Ebid { ebid, name, .. }
            if matches!(function, Some(Function::Inquire | Function::Delete)) =>
        {
            std::iter::once(ebid.clone()).chain(name.clone()).collect()
        }
        other => other.object_name().map(str::to_owned).into_iter().collect(),
    }
}

/// Reports a failure that hits every object: `#ERROR` per object (the
/// `#SOFTWAREID` line is already written), the reason as a comment and in
/// the log, one line on stderr.
fn fail_all(
    output: &Output,
    input: &InputFile,
    function: Option<Function>,
    log: &Logger,
    reason: &str,
) {
    for (_, entry) in &input.entries {
        let fields = match entry {
            Ok(line) => error_fields(function, line),
            Err(e) => e.name.iter().cloned().collect(),
        };
        output.emit(&OutputLine::Error(fields));
    }
    output.emit(&OutputLine::Comment(format!("strata: {reason}")));
    log.log(format!("every object failed: {reason}"));
    eprintln!("hdbbackint: {reason}");
}

fn read_input(invocation: &Invocation) -> std::io::Result<String> {
    let mut text = String::new();
    match &invocation.input {
        Some(path) => {
            let bytes = std::fs::read(path)?;
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        None => {
            std::io::stdin().read_to_string(&mut text)?;
        }
    }
    Ok(text)
}

fn load_params(invocation: &Invocation) -> strata_core::Result<Params> {
    match &invocation.param_file {
        Some(path) => Params::load(path),
        None if std::path::Path::new(DEFAULT_STRATA_CONFIG).exists() => Params::parse(
            &format!("config = {DEFAULT_STRATA_CONFIG}"),
            "the default configuration",
        ),
        None => Err(Error::config("HANA passed no parameter file (-p)").hint(
            "set [backup] data_backup_parameter_file, log_backup_parameter_file and catalog_backup_parameter_file in global.ini",
        )),
    }
}

async fn watch_signals(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tx.send(true);
}

/// Runs the agent for one invocation and returns the process exit code.
pub async fn run(invocation: Invocation) -> u8 {
    if invocation.version {
        println!("{}", software_id(ApiVersion::V1_50_2));
        return 0;
    }
    let parent = std::os::unix::process::parent_id();
    let input_text = match read_input(&invocation) {
        Ok(text) => text,
        Err(e) => {
            let what = invocation
                .input
                .as_ref()
                .map_or("standard input".to_owned(), |p| p.display().to_string());
            eprintln!("hdbbackint: cannot read the input file {what}: {e}");
            if let Ok(output) = Output::open(invocation.output.as_deref()) {
                output.emit(&software_id(ApiVersion::V1_04));
            }
            return 2;
        }
    };
    let input = InputFile::parse(&input_text);
    let version = ApiVersion::negotiate(input.version);
    let output = match Output::open(invocation.output.as_deref()) {
        Ok(output) => Arc::new(output),
        Err(e) => {
            eprintln!(
                "hdbbackint: cannot write the output file {}: {e}",
                invocation
                    .output
                    .as_ref()
                    .map_or("(standard output)".into(), |p| p.display().to_string())
            );
            return 2;
        }
    };
    output.emit(&software_id(version));

    let Some(function) = invocation.function else {
        let reason = match &invocation.function_text {
            Some(f) => {
                format!("unknown function `-f {f}`: expected backup, restore, inquire or delete")
            }
            None => "no function given: pass -f backup, restore, inquire or delete".to_owned(),
        };
        fail_all(&output, &input, None, &Logger::none(), &reason);
        return 2;
    };
    let params = match load_params(&invocation) {
        Ok(p) => p,
        Err(e) => {
            fail_all(
                &output,
                &input,
                Some(function),
                &Logger::none(),
                &one_line(&e),
            );
            return 2;
        }
    };
    let log = match &params.log_file {
        Some(path) => match Logger::open(path) {
            Ok(log) => log,
            Err(e) => {
                output.emit(&OutputLine::Comment(format!(
                    "strata: cannot write the log file {}: {e}",
                    path.display()
                )));
                Logger::none()
            }
        },
        None => Logger::none(),
    };
    log.log(format!(
        "{PRODUCT} started: -f {function} user {:?} backup id {:?} count {:?} level {:?}, Backint {} (HANA announced {:?}, {:?}), {} object line(s), input {:?}",
        invocation.user,
        invocation.backup_id,
        invocation.count,
        invocation.level,
        version,
        input.version.map(|v| v.to_string()),
        input.software,
        input.entries.len(),
        invocation.input,
    ));
    for note in &params.deprecations {
        log.log(note);
    }
    if !invocation.ignored.is_empty() {
        log.log(format!("ignored options: {:?}", invocation.ignored));
    }
    for (line_no, line) in &input.ignored {
        log.log(format!(
            "input line {line_no} ignored (not a Backint keyword this agent knows): {line:?}"
        ));
    }
    for option in &input.tool_options {
        log.log(format!(
            "#TOOLOPTION {option:?} accepted (no tool options are defined)"
        ));
    }
    let vault = match Vault::open(&params.vault).await {
        Ok(vault) => vault,
        Err(e) => {
            log.log(format!("opening the vault failed: {e:?}"));
            fail_all(&output, &input, Some(function), &log, &one_line(&e));
            return 1;
        }
    };
    let sid = invocation.sid().unwrap_or("UNKNOWN").to_owned();
    let (cancel_tx, cancel) = watch::channel(false);
    let signals = tokio::spawn(watch_signals(cancel_tx));
    let host = Host::new(vault.clone())
        .with_writer(params.writer_config(), true)
        .with_index(params.catalog.clone());
    let agent = Agent {
        store: VersionStore::new(vault, sid),
        host,
        invocation,
        input,
        params,
        version,
        output: output.clone(),
        log: Arc::new(log),
        cancel,
        parent,
    };
    match function {
        Function::Backup => agent.backup().await,
        Function::Restore => agent.restore().await,
        Function::Inquire => agent.inquire().await,
        Function::Delete => agent.delete().await,
    }
    signals.abort();
    if output.broken() {
        eprintln!("hdbbackint: the output file could not be written completely");
        return 1;
    }
    if output.failed() {
        let detail = agent.log.path().map_or_else(
            || "see the output file".to_owned(),
            |p| format!("details in {}", p.display()),
        );
        // HANA shows this one line in its own error: it names the first
        // object's failure (an unreachable vault, a damaged object), and
        // the log has every one.
        let first = output
            .first_failure()
            .map(|reason| format!(": {reason}"))
            .unwrap_or_default();
        eprintln!("hdbbackint: -f {function} failed for some objects{first}; {detail}");
        agent.log.log("finished with errors");
        return 1;
    }
    agent.log.log("finished");
    0
}
