-- What a group's UEFI x64 machines start from the network ('shim' or 'ipxe'; NULL: the
-- server's uefi_loader setting).
ALTER TABLE groups ADD COLUMN uefi_loader TEXT;
