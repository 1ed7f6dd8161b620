#!/usr/bin/env bash
# The README's editor screenshot (docs/src/editors/neovim.png): Debian's Neovim in an xterm on a
# virtual X display (Xvfb), configured by editors/neovim/se-compile.lua, with a broken spec on
# top (the diagnostic) and the fixed one below (a hover on a stage), captured with xwd.
# Needs: apt-get install neovim xvfb xterm x11-apps netpbm, and the built binary.
#     scripts/lsp-screenshot.sh [target/debug/se-compile] [out.png]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug/se-compile}")
out=${2:-docs/src/editors/neovim.png}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cp tests/lsp/tiny.se "$work/tiny.se"
sed 's/conv2d(filters = 16/conv2dd(filters = 16/' tests/lsp/tiny.se > "$work/broken.se"
cat > "$work/shot.lua" <<LUA
dofile('$PWD/editors/neovim/se-compile.lua')
vim.o.number = true
vim.o.laststatus = 0
vim.cmd('cd $work')
vim.cmd('edit broken.se')
local top = vim.api.nvim_get_current_buf()
vim.wait(15000, function() return #vim.diagnostic.get(top) > 0 end, 20)
vim.api.nvim_win_set_cursor(0, { 21, 4 })
vim.fn.winrestview({ topline = 13 })
vim.cmd('belowright split tiny.se')
vim.cmd('resize 20')
local bottom = vim.api.nvim_get_current_buf()
vim.wait(15000, function() return #vim.lsp.buf_get_clients(bottom) > 0 end, 20)
vim.api.nvim_win_set_cursor(0, { 22, 5 })
vim.cmd('normal! zz')
vim.wait(1000)
vim.lsp.buf.hover()
vim.defer_fn(function() vim.fn.writefile({ 'ready' }, '$work/ready') end, 1500)
LUA
Xvfb :77 -screen 0 1380x700x24 >/dev/null 2>&1 &
sleep 1
DISPLAY=:77 SE_COMPILE="$bin" xterm -geometry 152x36+0+0 -fa 'DejaVu Sans Mono' -fs 11 \
    -bg '#fdfdfd' -fg '#202020' -e nvim --clean -c "luafile $work/shot.lua" &
for _ in $(seq 100); do [ -e "$work/ready" ] && break; sleep 0.2; done
[ -e "$work/ready" ] || { echo "neovim did not get ready" >&2; exit 1; }
sleep 0.5
mkdir -p "$(dirname "$out")"
xwd -display :77 -root -silent | xwdtopnm 2>/dev/null | pnmcut -left 0 -top 0 -width 1380 -height 700 \
    | pnmtopng > "$out"
echo "wrote $out"
