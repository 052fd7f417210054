# An example source for golden images: Packer's qemu builder on a Debian root file system
# image booted directly (kernel + initrd), as tests/e2e builds it. Name it in images.yaml
# (packer: {sources: [source.qemu.debian]}); `make golden` passes the variables.

variable "base_image" {
  type    = string
  default = "base.raw"
}

variable "kernel" {
  type    = string
  default = "vmlinuz"
}

variable "initrd" {
  type    = string
  default = "initrd.img"
}

variable "ssh_key" {
  type    = string
  default = "ssh-key"
}

variable "output_dir" {
  type    = string
  default = "dist/golden"
}

variable "accelerator" {
  type    = string
  default = "tcg"
}

source "qemu" "debian" {
  iso_url              = var.base_image
  iso_checksum         = "none"
  disk_image           = true
  format               = "raw"
  output_directory     = var.output_dir
  vm_name              = "golden.raw"
  accelerator          = var.accelerator
  cpus                 = 2
  memory               = 2048
  headless             = true
  disk_interface       = "virtio"
  net_device           = "virtio-net"
  qemuargs             = [
    ["-cpu", "max"],
    ["-kernel", var.kernel],
    ["-initrd", var.initrd],
    ["-append", "root=/dev/vda rw console=ttyS0"],
  ]
  communicator         = "ssh"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_key
  ssh_timeout          = "30m"
  shutdown_command     = "poweroff"
  boot_wait            = "1s"
}
