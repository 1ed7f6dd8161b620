//! `se-compile parity`: a device against the CPU kernels, layer kind by layer kind.

use super::shared::{device_of, open_device, EXIT_INVALID, EXIT_USAGE};
use se_compile::lower::device::DeviceSpec;
use se_compile::lower::layers::Net;
use se_compile::lower::parity;

/// Compare a device with the CPU kernels, layer kind by layer kind: loss, probabilities
/// and every gradient on random inputs, in training and inference mode.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  se-compile parity --device cuda\n  (exit code 1 if any layer kind differs by more than --tolerance)"
)]
pub struct ParityArgs {
    /// cuda or cuda:N (N = GPU index), in a build with `--features cuda`.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Largest allowed difference (probabilities, loss; gradients relative to the
    /// largest gradient of their parameter).
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
}

/// Exit code 1 if any layer kind differs by more than the tolerance.
pub fn run(a: ParityArgs) -> Result<(), u8> {
    let dev = device_of(&a.device)?;
    if dev == DeviceSpec::Cpu {
        eprintln!("error: --device cpu is the reference; compare cuda or cuda:N with it");
        return Err(EXIT_USAGE);
    }
    let opened = open_device(dev)?;
    let rows = parity::run_all(&mut |net: &Net| {
        opened
            .place(net.clone_for_device())
            .unwrap_or_else(|e| panic!("parity cases run on every device: {e}"))
    });
    print!("{}", parity::table(&rows, &a.device, a.tolerance));
    if rows.iter().any(|r| !r.passes(a.tolerance)) {
        return Err(EXIT_INVALID);
    }
    Ok(())
}
