//! The `se-compile` command line: clap structs, calls into the library, diagnostics rendering.

mod commands;

use clap::{Parser, Subcommand, ValueEnum};
use commands::export::{ExportArgs, MapArg};
use se_compile::diag::{render, Style};
use se_compile::lower::device::{self, DeviceSpec};
use se_compile::lower::layers::Net;
use se_compile::lower::model::Model;
use se_compile::report::summary::{self, Depth, Format, Options};
use se_compile::{load, report, SourceFile, ValidGraph};
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "se-compile",
    version,
    about = "Compile declarative Squeeze-and-Excitation CNN specs (YAML or DSL) into a validated layer graph",
    after_help = "Examples:\n  se-compile check models/*.yaml\n  se-compile summary se_resnet50\n  se-compile summary models/se_resnet50.se --depth stage --format json\n  se-compile diff models/se_resnet50.yaml models/se_resnet50_timm.yaml\n  se-compile compile models/se_resnet50.yaml -o graph.json\n  se-compile graph models/se_block.yaml -o se_block.dot\n\nExit codes: 0 ok, 1 invalid spec, 2 bad usage (unknown option, missing file), 141 standard output\nclosed by its reader (`| head`), quietly, as SIGPIPE ends Unix tools."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Diagnostics in colour: auto (a terminal without NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: ColorChoice,
}

#[derive(Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DepthArg {
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

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
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

#[derive(Subcommand)]
enum Cmd {
    /// Validate specs: parse, expand and infer every shape.
    #[command(
        after_help = "Example:\n  se-compile check models/se_resnet50.yaml models/se_resnet50.se\n  (prints `ok: FILE (N layers, P params)` per file; diagnostics go to stderr)"
    )]
    Check {
        /// Spec files (.yaml, .yml, .se) or model names from models/.
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// Print the Keras-style summary table with MACs and memory.
    #[command(
        after_help = "Examples:\n  se-compile summary models/se_resnet50.yaml\n  se-compile summary se_resnet50 --depth block --show-source\n  se-compile summary models/se_block.yaml --format json > se_block.json"
    )]
    Summary {
        /// A spec file or a model name from models/ (e.g. `se_resnet50`).
        spec: String,
        /// Rows per layer, per block instance, or per stage; totals are the same at every depth.
        #[arg(long, value_enum, default_value = "layer")]
        depth: DepthArg,
        #[arg(long, value_enum, default_value = "text")]
        format: FormatArg,
        /// Add a column with the spec line each row comes from.
        #[arg(long)]
        show_source: bool,
    },
    /// Compare two specs per stage, block or layer: params, MACs and activation memory of both,
    /// the delta and percentage, and each one's SE overhead.
    #[command(
        after_help = "Examples:\n  se-compile diff models/se_resnet50.yaml models/se_resnet50_timm.yaml\n  se-compile diff se_resnet50 tests/diff/se_resnet50_r8.yaml --depth block --format markdown\n\nRows are aligned by stage/block/layer path; rows in one spec only are shown as added (+, only in B)\nor removed (-, only in A). The SE overhead compares each spec with itself without SE layers."
    )]
    Diff(commands::diff::DiffArgs),
    /// Write the validated IR graph as JSON.
    #[command(after_help = "Example:\n  se-compile compile models/se_resnet50.yaml -o graph.json")]
    Compile {
        spec: String,
        /// Output file (`-` for stdout).
        #[arg(short, long, default_value = "-")]
        output: String,
    },
    /// Train from image folders (Keras flow_from_directory layout), as the seed's model.fit.
    #[command(
        after_help = "Examples:\n  se-compile train models/se_resnet_mini.yaml            (bundled Fashion-MNIST subset)\n  se-compile train models/se_resnet_mini.yaml --data /data/fmnist --epochs 15 --out runs/full\n  se-compile train models/se_resnet_mini.yaml --resume runs/full --epochs 20\n\nRUN_DIR receives history.csv, history.json, accuracy.png, loss.png, last.safetensors,\nbest.safetensors, the spec and config.json. Every key of the spec's `train:` section can be\noverridden here."
    )]
    Train(Box<commands::train::TrainArgs>),
    /// Loss, accuracy and confusion matrix of saved weights on DIR/test (or DIR/train).
    #[command(
        after_help = "Example:\n  se-compile eval models/se_resnet_mini.yaml --weights runs/se_resnet_mini/best.safetensors --data data/fashion-mnist-mini"
    )]
    Eval(commands::eval::EvalArgs),
    /// The SE paper's excitation analysis (Section 7, Fig. 6): the mean excitation of every SE
    /// block per channel, over all images and per class, and each block's class specificity.
    #[command(after_help = commands::analyze::HELP)]
    Analyze(commands::analyze::AnalyzeArgs),
    /// Top-k classes with probabilities for images.
    #[command(
        after_help = "Example:\n  se-compile predict models/se_resnet_mini.yaml --weights runs/se_resnet_mini/best.safetensors data/fashion-mnist-mini/test/7_sneaker/*.png"
    )]
    Predict(commands::predict::PredictArgs),
    /// Train and inference speed (images/s) on random data.
    #[command(
        after_help = "Example:\n  se-compile bench models/se_resnet50.yaml --input 64 --batch-size 8 --steps 5"
    )]
    Bench(commands::bench::BenchArgs),
    /// Compare a device with the CPU kernels, layer kind by layer kind: loss, probabilities
    /// and every gradient on random inputs, in training and inference mode.
    #[command(
        after_help = "Example:\n  se-compile parity --device cuda\n  (exit code 1 if any layer kind differs by more than --tolerance)"
    )]
    Parity {
        /// cuda or cuda:N (N = GPU index), in a build with `--features cuda`.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Largest allowed difference (probabilities, loss; gradients relative to the
        /// largest gradient of their parameter).
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f32,
    },
    /// Export the model: ONNX (one .onnx file) or PyTorch (model.py + weights.safetensors, and train.py for torchrun).
    #[command(
        after_help = "Examples:\n  se-compile export se_resnet50 --format onnx -o se_resnet50.onnx\n  se-compile export models/se_resnet_mini.yaml --format onnx --weights runs/se_resnet_mini/best.safetensors -o mini.onnx --batch 1\n  se-compile export models/se_resnet_mini.yaml --format pytorch --weights runs/se_resnet_mini/best.safetensors -o mini_torch\n\nWithout --weights the network's seeded initial values (the recipe's seed) are exported.\nONNX input is NHWC float pixels / 255, as se-compile feeds them (--input-layout nchw for NCHW)."
    )]
    Export(ExportArgs),
    /// Read a PyTorch state dict (safetensors) into a se-compile checkpoint for SPEC.
    #[command(
        name = "import-weights",
        after_help = "Example:\n  python -c \"import timm, safetensors.torch as st; st.save_file(timm.create_model('seresnet50').state_dict(), 'seresnet50.safetensors')\"\n  se-compile import-weights models/se_resnet50_timm.yaml --from seresnet50.safetensors -o se_resnet50_timm.safetensors\n  se-compile eval models/se_resnet50_timm.yaml --weights se_resnet50_timm.safetensors --data DIR\n\nEvery tensor is checked by name and shape; nothing is written on error."
    )]
    ImportWeights {
        spec: String,
        /// The state dict, saved with safetensors.torch.save_file.
        #[arg(long)]
        from: String,
        /// Key mapping: timm (timm's ResNet family), keras (se-compile's own names), auto.
        #[arg(long, value_enum, default_value = "auto")]
        map: MapArg,
        /// The checkpoint to write.
        #[arg(short, long)]
        output: String,
    },
    /// Print a JSON Schema of the YAML spec (for editors: yaml-language-server).
    #[command(
        after_help = "Example:\n  se-compile schema > se-compile.schema.json\n  and put `# yaml-language-server: $schema=./se-compile.schema.json` at the top of a spec"
    )]
    Schema {
        /// Output file (`-` for stdout).
        #[arg(short, long, default_value = "-")]
        output: String,
    },
    /// Write a Graphviz DOT graph with the output shape on every edge.
    #[command(
        after_help = "Example:\n  se-compile graph models/se_block.yaml -o se_block.dot && dot -Tpng se_block.dot -o se_block.png"
    )]
    Graph {
        spec: String,
        /// Output file (`-` for stdout).
        #[arg(short, long, default_value = "-")]
        output: String,
    },
}

/// 1 for an invalid spec; 2 for usage errors (clap's own code for bad arguments).
pub(crate) const EXIT_INVALID: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;

pub(crate) struct Ctx {
    pub(crate) style: Style,
}

impl Ctx {
    pub(crate) fn build_full(
        &self,
        path: &str,
        hw: Option<(usize, usize)>,
    ) -> Result<(SourceFile, se_compile::spec::ast::Spec, ValidGraph), u8> {
        let src = load(path).map_err(|e| {
            eprintln!("error: {e}");
            if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_INVALID
            }
        })?;
        match se_compile::compile_full(&src, hw) {
            Ok((spec, vg)) => Ok((src, spec, vg)),
            Err(d) => {
                eprint!("{}", render(&d, &src, self.style));
                Err(EXIT_INVALID)
            }
        }
    }

    /// Loads and compiles one spec, printing any error; `Err` carries the exit code.
    fn build(&self, path: &str) -> Result<(SourceFile, ValidGraph), u8> {
        self.build_full(path, None).map(|(src, _, vg)| (src, vg))
    }
}

/// `--device`: known, and possible in this build (CUDA needs the `cuda` feature).
pub(crate) fn device_of(flag: &str) -> Result<DeviceSpec, u8> {
    device::parse(flag)
        .and_then(|d| device::check(d, flag).map(|_| d))
        .map_err(|e| {
            eprintln!("error: {e}");
            EXIT_USAGE
        })
}

/// The network on the device; a GPU that cannot be opened is an error, not a panic.
pub(crate) fn on_device(net: Net, d: DeviceSpec) -> Result<Box<dyn Model>, u8> {
    let dev = open_device(d)?;
    dev.place(net).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_INVALID
    })
}

fn open_device(d: DeviceSpec) -> Result<device::Opened, u8> {
    device::open(d).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            device::DeviceError::Usage(_) => EXIT_USAGE,
            device::DeviceError::Unavailable(_) => EXIT_INVALID,
        }
    })
}

/// The Fashion-MNIST subset shipped in the repository.
pub(crate) fn bundled_data() -> std::path::PathBuf {
    let local = std::path::PathBuf::from("data/fashion-mnist-mini");
    if local.is_dir() {
        local
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-mini")
    }
}

pub(crate) fn fresh_run_dir(model: &str) -> std::path::PathBuf {
    let base = std::path::PathBuf::from("runs").join(model);
    if !base.exists() {
        return base;
    }
    (2..)
        .map(|i| std::path::PathBuf::from("runs").join(format!("{model}-{i}")))
        .find(|p| !p.exists())
        .expect("a free name")
}

/// The CPU network itself (not behind `Model`) with the checkpoint's weights: what export
/// writes, what inference lowers, what `analyze` probes.
pub(crate) fn load_cpu_net(vg: &ValidGraph, weights: &str) -> Result<Net, u8> {
    let p = std::path::Path::new(weights);
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
pub(crate) fn load_weights(
    vg: &ValidGraph,
    weights: &str,
    d: DeviceSpec,
) -> Result<Box<dyn Model>, u8> {
    on_device(load_cpu_net(vg, weights)?, d)
}

/// The checkpoint's network on the device for inference (eval, predict).
pub(crate) fn load_for_inference(
    vg: &ValidGraph,
    weights: &str,
    d: DeviceSpec,
) -> Result<Box<dyn Model>, u8> {
    on_device(lowered_for_inference(&load_cpu_net(vg, weights)?, d), d)
}

/// `net` lowered for inference (`lower::fold`): BatchNorms folded into their convolutions on
/// every device and, on the CPU, activations fused into the convolutions before them.
pub(crate) fn lowered_for_inference(net: &Net, d: DeviceSpec) -> Net {
    let folded = net.folded_for_inference().0;
    match d {
        DeviceSpec::Cpu => folded.with_fused_activations().0,
        _ => folded,
    }
}

/// Class names from the run's config.json beside the weights, if there is one.
pub(crate) fn class_names(weights: &str) -> Vec<String> {
    let cfg = std::path::Path::new(weights).with_file_name("config.json");
    std::fs::read_to_string(cfg)
        .ok()
        .and_then(|t| serde_json::from_str::<se_compile::train::run::RunConfig>(&t).ok())
        .map(|c| c.classes)
        .unwrap_or_default()
}

fn write_out(path: &str, text: &str) -> Result<(), u8> {
    if path == "-" {
        print!("{text}");
        return Ok(());
    }
    // Write to a temporary file and rename, so an interrupted run never leaves half a file.
    let tmp = format!("{path}.tmp-{}", std::process::id());
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("error: cannot write {path}: {e}");
            EXIT_USAGE
        })?;
    eprintln!("wrote {path}");
    Ok(())
}

fn run(cli: Cli) -> Result<(), u8> {
    let style = match cli.color {
        ColorChoice::Always => Style::Color,
        ColorChoice::Never => Style::Plain,
        ColorChoice::Auto
            if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() =>
        {
            Style::Color
        }
        ColorChoice::Auto => Style::Plain,
    };
    let cx = Ctx { style };
    match cli.cmd {
        Cmd::Check { specs } => {
            let mut worst = 0;
            for s in &specs {
                match cx.build(s) {
                    Ok((src, vg)) => println!(
                        "ok: {} ({} layers, {} params)",
                        src.name,
                        vg.graph().nodes.len(),
                        report::thousands(vg.totals().params.total())
                    ),
                    Err(code) => worst = worst.max(code),
                }
            }
            if worst != 0 {
                return Err(worst);
            }
        }
        Cmd::Summary {
            spec,
            depth,
            format,
            show_source,
        } => {
            let (src, vg) = cx.build(&spec)?;
            let opts = Options {
                depth: depth.into(),
                format: format.into(),
                show_source,
            };
            print!("{}", summary::render(&vg, &src, &opts));
        }
        Cmd::Compile { spec, output } => {
            let (src, vg) = cx.build(&spec)?;
            let mut text = serde_json::to_string_pretty(&report::ir_json::ir_json(&vg, &src))
                .expect("plain JSON");
            text.push('\n');
            write_out(&output, &text)?;
        }
        Cmd::Train(a) => commands::train::run(&cx, *a)?,
        Cmd::Eval(a) => commands::eval::run(&cx, a)?,
        Cmd::Diff(a) => commands::diff::run(&cx, a)?,
        Cmd::Predict(a) => commands::predict::run(&cx, a)?,
        Cmd::Analyze(a) => commands::analyze::run(&cx, a)?,
        Cmd::Bench(a) => commands::bench::run(&cx, a)?,
        Cmd::Parity { device, tolerance } => {
            let dev = device_of(&device)?;
            if dev == DeviceSpec::Cpu {
                eprintln!("error: --device cpu is the reference; compare cuda or cuda:N with it");
                return Err(EXIT_USAGE);
            }
            let opened = open_device(dev)?;
            let rows = se_compile::lower::parity::run_all(&mut |net: &Net| {
                opened
                    .place(net.clone_for_device())
                    .unwrap_or_else(|e| panic!("parity cases run on every device: {e}"))
            });
            let name = device.clone();
            print!(
                "{}",
                se_compile::lower::parity::table(&rows, &name, tolerance)
            );
            if rows.iter().any(|r| !r.passes(tolerance)) {
                return Err(EXIT_INVALID);
            }
        }
        Cmd::Export(a) => commands::export::run_export(&cx, a)?,
        Cmd::ImportWeights {
            spec,
            from,
            map,
            output,
        } => commands::export::run_import(&cx, &spec, &from, map, &output)?,
        Cmd::Schema { output } => {
            let mut text = serde_json::to_string_pretty(&se_compile::spec::schema::schema())
                .expect("plain JSON");
            text.push('\n');
            write_out(&output, &text)?;
        }
        Cmd::Graph { spec, output } => {
            let (_, vg) = cx.build(&spec)?;
            write_out(&output, &report::dot::dot(&vg))?;
        }
    }
    Ok(())
}

/// Exit status for a closed standard output: what a shell reports for a process that SIGPIPE
/// ended (128 + 13), as for `cat`, `grep` or ripgrep behind `| head`.
const EXIT_BROKEN_PIPE: i32 = 141;

/// `println!` panics on a write error; this hook turns that panic into an orderly exit.
/// - A closed standard output (`se-compile summary ... | head -3`): the reader has all it
///   wanted, so the process exits quietly with status 141, as Unix tools do (a `set -o
///   pipefail` script still sees a non-zero status).
/// - Any other write error (a full disk behind a redirect): output was lost, so it is a one-line
///   error naming the cause, and exit code 1.
fn stdout_errors_are_errors() {
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

fn main() -> ExitCode {
    stdout_errors_are_errors();
    let cli = Cli::parse();
    se_compile::lower::tune_allocator();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}
