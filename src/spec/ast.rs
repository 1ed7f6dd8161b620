//! The AST that both front ends (YAML, DSL) produce. Every user-written value keeps its span.

use crate::source::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A quoted string.
    Str(String),
    /// A bare word: a parameter if one is in scope, else a symbol such as `relu` or `same`.
    Name(String),
    List(Vec<Expr>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// `min(a, b)`, `max`, `floor`, `ceil`, `round`, `int`.
    Call(Ident, Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

/// `key = value` (DSL) or `key: value` (YAML); positional when `key` is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub key: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ItemKind {
    /// A layer (`conv2d`), the SE construct (`se`) or a block template use (`bottleneck`).
    Call { op: Ident, args: Vec<Arg> },
    /// `shortcut` (identity when empty or all skipped) and `branch`, joined by an Add.
    Residual {
        shortcut: Vec<Item>,
        branch: Vec<Item>,
    },
    /// Branches on the same input, joined by a Concatenate (Inception).
    Parallel { branches: Vec<(Span, Vec<Item>)> },
    /// A block template repeated `repeat` times.
    Stage { block: Ident, args: Vec<Arg> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub kind: ItemKind,
    /// Keras layer name (global, must be unique).
    pub name: Option<Ident>,
    /// Local label that later `from` references can use inside the same block.
    pub id: Option<Ident>,
    /// Inputs; default is the previous item's output.
    pub from: Vec<Ident>,
    /// Condition: the item is skipped when it evaluates to false.
    pub when: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Item>,
    pub span: Span,
}

/// Default arguments for every layer of one kind, e.g. `conv2d: {use_bias: false}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub op: Ident,
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SeSetting {
    Off(Span),
    On(Vec<Arg>, Span),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub model: Option<Ident>,
    /// H, W, C (channels-last, as Keras).
    pub input: Vec<Expr>,
    pub input_span: Span,
    pub classes: Option<Expr>,
    pub se: Option<SeSetting>,
    pub defaults: Vec<Defaults>,
    pub blocks: Vec<BlockDef>,
    pub layers: Vec<Item>,
    pub layers_span: Span,
    /// The training recipe, checked by the training back end.
    pub train: Vec<Arg>,
    pub train_span: Option<Span>,
    /// Whole-file span, for errors that belong to no line.
    pub span: Span,
}

impl Item {
    pub fn op_name(&self) -> &str {
        match &self.kind {
            ItemKind::Call { op, .. } => &op.name,
            ItemKind::Residual { .. } => "residual",
            ItemKind::Parallel { .. } => "parallel",
            ItemKind::Stage { .. } => "stage",
        }
    }
}
