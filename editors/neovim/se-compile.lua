-- se-compile's language server for .se files and se-compile YAML specs (Neovim 0.7 or later).
-- `se-compile` must be on PATH (or named by $SE_COMPILE). YAML files that are not specs (no
-- top-level `layers:`) get nothing from it.
vim.api.nvim_create_autocmd({ 'BufRead', 'BufNewFile' }, { pattern = '*.se', command = 'setfiletype se' })
local se_compile
vim.api.nvim_create_autocmd('FileType', {
  pattern = { 'se', 'yaml' },
  callback = function(args)
    se_compile = se_compile or vim.lsp.start_client({
      name = 'se-compile',
      cmd = { vim.env.SE_COMPILE or 'se-compile', 'lsp' },
      root_dir = vim.fn.getcwd(),
    })
    vim.lsp.buf_attach_client(args.buf, se_compile)
  end,
})
