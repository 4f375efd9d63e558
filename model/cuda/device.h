// Which CUDA device a process uses. Nothing here reads the launcher's environment: the caller
// says which node-local rank it is (the trainer asks host_local_rank, parallel/launch.h). Needs
// no CUDA headers.
#pragma once

namespace sy {

// How many CUDA devices this process sees (0 when there is no driver or no device; never
// throws). Tests skip on 0.
int cuda_device_count();

// The device for node-local rank `local_rank`: local_rank modulo the number of visible devices
// (ranks share a GPU when a node has more ranks than GPUs). Throws, naming `rank` (the world
// rank, for the message only), when no device is visible.
int cuda_device_for_local_rank(int local_rank, int rank = 0);

}  // namespace sy
