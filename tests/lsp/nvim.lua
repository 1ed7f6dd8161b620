-- Neovim's own LSP client against `se-compile lsp` (tests/lsp_nvim.rs runs this headless),
-- set up by the README's configuration (editors/neovim/se-compile.lua). Opens SE_FILE, waits for its diagnostics, fixes the typo through the buffer (a didChange),
-- waits for the diagnostics to clear, asks for a hover on the fixed line, writes all to SE_OUT.
local out = {}
local function log(s) table.insert(out, (s:gsub('\n', ' | '))) end
dofile(vim.env.SE_CONFIG)
vim.cmd('edit ' .. vim.env.SE_FILE)
local buf = vim.api.nvim_get_current_buf()
log('filetype ' .. vim.bo[buf].filetype)
local got = vim.wait(15000, function() return #vim.diagnostic.get(buf) > 0 end, 20)
log('diagnostics ' .. tostring(got))
local row, col
for _, d in ipairs(vim.diagnostic.get(buf)) do
  log(string.format('diagnostic %d:%d %s %s', d.lnum + 1, d.col + 1, tostring(d.code or ''), d.message))
  row, col = d.lnum, d.col
end
if row then
  -- Delete the extra `d` of `conv2dd`, as a user would.
  vim.api.nvim_buf_set_text(buf, row, col + 6, row, col + 7, { '' })
  local cleared = vim.wait(15000, function() return #vim.diagnostic.get(buf) == 0 end, 20)
  log('cleared ' .. tostring(cleared))
  local params = { textDocument = { uri = vim.uri_from_bufnr(buf) }, position = { line = row, character = col + 2 } }
  local res = vim.lsp.buf_request_sync(buf, 'textDocument/hover', params, 15000)
  for _, r in pairs(res or {}) do
    if r.result then log('hover ' .. r.result.contents.value) end
  end
end
vim.fn.writefile(out, vim.env.SE_OUT)
vim.cmd('qa!')
