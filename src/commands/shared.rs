//! What the subcommands share: exit codes, loading and compiling a spec with its diagnostics
//! rendered, `--depth` / `--format` / `--color`, devices and checkpoints, writing outputs.

use se_compile::diag::{render, Style};
use se_compile::lower::device::{self, DeviceSpec};
use se_compile::lower::layers::Net;
use se_compile::lower::model::Model;
use se_compile::report::summary::{Depth, Format};
use se_compile::util::atomic::write_atomic;
use se_compile::{load, SourceFile, ValidGraph};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// 1 for an invalid spec; 2 for usage errors (clap's own code for bad arguments).
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// Exit status for a closed standard output: what a shell reports for a process that SIGPIPE
/// ended (128 + 13), as for `cat`, `grep` or ripgrep behind `| head`.
const EXIT_BROKEN_PIPE: i32 = 141;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DepthArg {
    Stage,
    Block,
    Layer,
}

impl From<DepthArg> for Depth {
    fn from(d: DepthArg) -> Depth {
        match d {
            DepthArg::Stage => Depth::Stage,
            DepthArg::Block => Depth::Block,
            DepthArg::Layer => Depth::Layer,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Text,
    Json,
    Markdown,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Text => Format::Text,
            FormatArg::Json => Format::Json,
            FormatArg::Markdown => Format::Markdown,
        }
    }
}

/// What every subcommand gets: how to render diagnostics.
pub struct Ctx {
    pub style: Style,
}

impl Ctx {
    /// `--color`: `auto` is colour on a terminal without NO_COLOR.
    pub fn new(color: ColorChoice) -> Ctx {
        let style = match color {
            ColorChoice::Always => Style::Color,
            ColorChoice::Never => Style::Plain,
            ColorChoice::Auto
                if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() =>
            {
                Style::Color
            }
            ColorChoice::Auto => Style::Plain,
        };
        Ctx { style }
    }

    pub fn build_full(
        &self,
        path: &str,
        hw: Option<(usize, usize)>,
    ) -> Result<(SourceFile, se_compile::spec::ast::Spec, ValidGraph), u8> {
        compile_spec(path, hw, self.style).map_err(|(code, text)| {
            eprint!("{text}");
            code
        })
    }

    /// Loads and compiles one spec, printing any error; `Err` carries the exit code.
    pub fn build(&self, path: &str) -> Result<(SourceFile, ValidGraph), u8> {
        self.build_full(path, None).map(|(src, _, vg)| (src, vg))
    }
}

/// Loads and compiles one spec; `Err` has the exit code and the text `check` prints for it on
/// standard error (`style` as `--color`), which `view --serve` shows in its page.
pub fn compile_spec(
    path: &str,
    hw: Option<(usize, usize)>,
    style: Style,
) -> Result<(SourceFile, se_compile::spec::ast::Spec, ValidGraph), (u8, String)> {
    let src = load(path).map_err(|e| {
        let code = if e.is_usage() {
            EXIT_USAGE
        } else {
            EXIT_INVALID
        };
        (code, format!("error: {e}\n"))
    })?;
    match se_compile::compile_full(&src, hw) {
        Ok((spec, vg)) => Ok((src, spec, vg)),
        Err(d) => Err((EXIT_INVALID, render(&d, &src, style))),
    }
}

/// `--device`: known, and possible in this build (CUDA needs the `cuda` feature).
pub fn device_of(flag: &str) -> Result<DeviceSpec, u8> {
    device::parse(flag)
        .and_then(|d| device::check(d, flag).map(|_| d))
        .map_err(|e| {
            eprintln!("error: {e}");
            EXIT_USAGE
        })
}

/// The network on the device; a GPU that cannot be opened is an error, not a panic.
pub fn on_device(net: Net, d: DeviceSpec) -> Result<Box<dyn Model>, u8> {
    let dev = open_device(d)?;
    dev.place(net).map_err(device_failed)
}

pub fn open_device(d: DeviceSpec) -> Result<device::Opened, u8> {
    device::open(d).map_err(device_failed)
}

/// Prints a device error; its exit code: a usage error's, or an invalid input's.
fn device_failed(e: device::DeviceError) -> u8 {
    eprintln!("error: {e}");
    match e {
        device::DeviceError::Usage(_) => EXIT_USAGE,
        device::DeviceError::Unavailable(_) => EXIT_INVALID,
    }
}

/// The Fashion-MNIST subset shipped in the repository.
pub fn bundled_data() -> PathBuf {
    let local = PathBuf::from("data/fashion-mnist-mini");
    if local.is_dir() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-mini")
    }
}

pub fn fresh_run_dir(model: &str) -> PathBuf {
    let base = PathBuf::from("runs").join(model);
    if !base.exists() {
        return base;
    }
    (2..)
        .map(|i| PathBuf::from("runs").join(format!("{model}-{i}")))
        .find(|p| !p.exists())
        .expect("a free name")
}

/// The CPU network itself (not behind `Model`) with the checkpoint's weights: what export
/// writes, what inference lowers, what `analyze` probes.
pub fn load_cpu_net(vg: &ValidGraph, weights: &str) -> Result<Net, u8> {
    let p = Path::new(weights);
    // A missing checkpoint is a usage error; an unreadable one an invalid input.
    let ck = se_compile::train::checkpoint::read(p).map_err(|e| {
        eprintln!("error: {e}");
        if p.exists() {
            EXIT_INVALID
        } else {
            EXIT_USAGE
        }
    })?;
    let mut net = Net::new(vg, 0);
    // Weights of another spec (a missing or mis-sized tensor) are an invalid input.
    se_compile::train::checkpoint::load_into(&mut net, &ck, p).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_INVALID
    })?;
    Ok(net)
}

/// The checkpoint's network on the device, as saved (what export writes out).
pub fn load_weights(vg: &ValidGraph, weights: &str, d: DeviceSpec) -> Result<Box<dyn Model>, u8> {
    on_device(load_cpu_net(vg, weights)?, d)
}

/// The checkpoint's network on the device for inference (eval, predict).
pub fn load_for_inference(
    vg: &ValidGraph,
    weights: &str,
    d: DeviceSpec,
) -> Result<Box<dyn Model>, u8> {
    on_device(lowered_for_inference(&load_cpu_net(vg, weights)?, d), d)
}

/// `net` lowered for inference (`lower::plan`'s passes): BatchNorms folded into their convolutions on
/// every device and, on the CPU, activations fused into the convolutions before them.
pub fn lowered_for_inference(net: &Net, d: DeviceSpec) -> Net {
    let folded = net.folded_for_inference().0;
    match d {
        DeviceSpec::Cpu => folded.with_fused_activations().0,
        _ => folded,
    }
}

/// Class names from the run's config.json beside the weights, if there is one.
pub fn class_names(weights: &str) -> Vec<String> {
    let cfg = Path::new(weights).with_file_name("config.json");
    std::fs::read_to_string(cfg)
        .ok()
        .and_then(|t| serde_json::from_str::<se_compile::train::run::RunConfig>(&t).ok())
        .map(|c| c.classes)
        .unwrap_or_default()
}

/// Prints `error: MSG`; the exit code of an invalid input.
pub fn fail(msg: impl std::fmt::Display) -> u8 {
    eprintln!("error: {msg}");
    EXIT_INVALID
}

/// The directory a new file or folder at `path` goes into must exist.
pub fn check_parent(path: &Path) -> Result<(), u8> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Ok(()),
    };
    if !parent.is_dir() {
        return Err(fail(format!(
            "{}: the directory {} does not exist; create it first or choose another -o",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// `-o`: a text output to standard output (`-`) or, atomically, to a file.
pub fn write_out(path: &str, text: &str) -> Result<(), u8> {
    if path == "-" {
        print!("{text}");
        return Ok(());
    }
    write_atomic(Path::new(path), text.as_bytes()).map_err(|e| {
        eprintln!("error: cannot write {path}: {e}");
        EXIT_USAGE
    })?;
    eprintln!("wrote {path}");
    Ok(())
}

/// JSON as the text outputs write it: pretty, with a final newline.
pub fn pretty_json(value: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("plain JSON");
    text.push('\n');
    text
}

/// `println!` panics on a write error; this hook turns that panic into an orderly exit.
/// - A closed standard output (`se-compile summary ... | head -3`): the reader has all it
///   wanted, so the process exits quietly with status 141, as Unix tools do (a `set -o
///   pipefail` script still sees a non-zero status).
/// - Any other write error (a full disk behind a redirect): output was lost, so it is a one-line
///   error naming the cause, and exit code 1.
pub fn stdout_errors_are_errors() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(|s| s.as_str())
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(why) = msg.strip_prefix("failed printing to stdout: ") {
            if why.starts_with("Broken pipe") {
                std::process::exit(EXIT_BROKEN_PIPE);
            }
            eprintln!("error: cannot write to standard output ({why}); the output is incomplete");
            std::process::exit(EXIT_INVALID as i32);
        }
        if msg.starts_with("failed printing to stderr: ") {
            // Nowhere left to report to; the exit code says it.
            std::process::exit(EXIT_INVALID as i32);
        }
        default(info);
    }));
}
