// A kernel that never ends, for the test that a hung device is reported within the timeout
// (CudaBackend::plant_hang): it spins on a flag nothing ever sets (volatile, so that the loop
// is not optimised away).

extern "C" __global__ void hang(volatile int* flag) {
    wait_for_prior_grids();
    while (*flag == 0) {
    }
}
