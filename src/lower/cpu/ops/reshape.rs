//! Flatten and Reshape (`Layer::Reshape`): the data is already flat, so only the logical shape
//! changes; there is no backward of its own (the tensor, and its tape, pass through).

use crate::lower::autodiff::Act;
use dfdx::prelude::*;
use dfdx::tensor::Tape;

/// `ins[0]` with the shape `out_shape`.
pub fn forward<T: Tape<f32, Cpu>>(mut ins: Vec<Act<T>>, out_shape: Vec<usize>) -> Act<T> {
    ins.remove(0).reshaped(out_shape)
}
