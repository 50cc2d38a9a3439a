import SwitchyardSupport

/// The GPU kernels, as CUDA C compiled by NVRTC for the GPU present at first use. They mirror the
/// CPU kernels (Kernels module) operation for operation: float32 activations and accumulation,
/// bf16 weights widened exactly (`bits << 16`), so the two devices agree to rounding.
public enum KernelSources {
    /// Shared helpers, prepended to every kernel source.
    static let prelude = #"""
    typedef unsigned short bf16_t;
    __device__ __forceinline__ float bf16_to_float(bf16_t v) { return __uint_as_float(((unsigned int)v) << 16); }
    __device__ __forceinline__ float warp_sum(float v) {
        for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
        return v;
    }
    __device__ __forceinline__ float warp_max(float v) {
        for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
        return v;
    }
    // Sum over a block of up to 1024 threads; every thread gets the total.
    __device__ float block_sum(float v, float* shared) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        v = warp_sum(v);
        if (lane == 0) shared[warp] = v;
        __syncthreads();
        int warps = (blockDim.x + 31) >> 5;
        v = (threadIdx.x < warps) ? shared[threadIdx.x] : 0.0f;
        if (warp == 0) v = warp_sum(v);
        if (threadIdx.x == 0) shared[0] = v;
        __syncthreads();
        float total = shared[0];
        __syncthreads();
        return total;
    }
    """#

    /// name → source; each is one compilation unit with `extern "C"` entry points.
    public static let all: [(name: String, source: String)] = [
        ("embedding", #"""
        // out[t, :] = table[ids[t], :] widened; grid (tokens), block (any).
        extern "C" __global__ void embedding_bf16(const bf16_t* table, const int* ids, float* out, int hidden) {
            const bf16_t* row = table + (long long)ids[blockIdx.x] * hidden;
            float* o = out + (long long)blockIdx.x * hidden;
            for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = bf16_to_float(row[i]);
        }
        """#),
        ("rms_norm", #"""
        // y[r, :] = x[r, :] * rsqrt(mean(x²) + eps) * w; grid (rows), block (<= 1024).
        extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, int n, float eps) {
            __shared__ float shared[32];
            const float* xr = x + (long long)blockIdx.x * n;
            float* yr = y + (long long)blockIdx.x * n;
            float s = 0.0f;
            for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
            float scale = 1.0f / sqrtf(block_sum(s, shared) / (float)n + eps);
            for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = w[i] * (xr[i] * scale);
        }
        """#),
        ("rope", #"""
        // Rotate-half RoPE in place: dimension i pairs with i + rotary/2. x is [tokens, heads, head_dim];
        // cos/sin are [tokens, rotary/2]. grid (tokens, heads), block (rotary/2).
        extern "C" __global__ void rope_f32(float* x, const float* cos_table, const float* sin_table,
                                            int heads, int head_dim, int rotary_dim) {
            int half = rotary_dim / 2, i = threadIdx.x;
            if (i >= half) return;
            float* v = x + ((long long)blockIdx.x * heads + blockIdx.y) * head_dim;
            float c = cos_table[blockIdx.x * half + i], s = sin_table[blockIdx.x * half + i];
            float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
        """#),
        ("silu_mul", #"""
        // gate = silu(gate) * up, elementwise over n values.
        extern "C" __global__ void silu_mul_f32(float* gate, const float* up, long long n) {
            long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) { float g = gate[i]; gate[i] = g / (1.0f + expf(-g)) * up[i]; }
        }
        """#),
        ("add", #"""
        // y += x, elementwise (residual connections); y += alpha * x for expert mixing.
        extern "C" __global__ void axpy_f32(float* y, const float* x, float alpha, long long n) {
            long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) y[i] += alpha * x[i];
        }
        """#),
        ("matvec", #"""
        // y[t, r] = sum_c W[r, c] * x[t, c] for a few tokens: one warp per row, bf16 weights read once
        // for all tokens (up to 8), 8 bf16 values per 16-byte load. grid (ceil(rows / warps)), block (32 x warps).
        extern "C" __global__ void matvec_bf16(const bf16_t* w, const float* x, float* y,
                                               int rows, int cols, int tokens, int x_stride, int y_stride) {
            int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
            int lane = threadIdx.x & 31;
            if (row >= rows) return;
            const bf16_t* wr = w + (long long)row * cols;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int vec_cols = (cols & 7) == 0 ? cols : 0;
            for (int c = lane * 8; c < vec_cols; c += 256) {
                uint4 packed = *reinterpret_cast<const uint4*>(wr + c);
                unsigned int parts[4] = {packed.x, packed.y, packed.z, packed.w};
                for (int k = 0; k < 4; k++) {
                    float w0 = __uint_as_float(parts[k] << 16), w1 = __uint_as_float(parts[k] & 0xffff0000u);
                    for (int t = 0; t < tokens && t < 8; t++) {
                        const float* xt = x + (long long)t * x_stride + c + 2 * k;
                        acc[t] += w0 * xt[0] + w1 * xt[1];
                    }
                }
            }
            for (int c = vec_cols + lane; c < cols; c += 32) {
                float wv = bf16_to_float(wr[c]);
                for (int t = 0; t < tokens && t < 8; t++) acc[t] += wv * x[(long long)t * x_stride + c];
            }
            for (int t = 0; t < tokens && t < 8; t++) {
                float s = warp_sum(acc[t]);
                if (lane == 0) y[(long long)t * y_stride + row] = s;
            }
        }
        """#),
        ("attention", #"""
        // Decode and chunked-prefill attention over a float32 KV cache with grouped KV heads: query
        // head h reads KV head h / (heads / kv_heads). One block per (token, head); scores in shared
        // memory (context <= 12288 here; longer contexts take the split kernel). q is [tokens, heads,
        // head_dim], caches are [positions, kv_heads, head_dim], positions[t] is token t's position.
        extern "C" __global__ void attention_f32(const float* q, const float* k_cache, const float* v_cache, float* out,
                                                 const int* positions, int heads, int kv_heads, int head_dim,
                                                 int window, float scale) {
            extern __shared__ float scores[];
            __shared__ float reduce[32];
            int t = blockIdx.x, h = blockIdx.y;
            int last = positions[t];
            int first = window > 0 ? max(0, last - window + 1) : 0;
            int kv = h / (heads / kv_heads);
            int row = kv_heads * head_dim;
            const float* qh = q + ((long long)t * heads + h) * head_dim;
            float local_max = -3.0e38f;
            for (int j = first + threadIdx.x; j <= last; j += blockDim.x) {
                const float* k = k_cache + (long long)j * row + kv * head_dim;
                float s = 0.0f;
                for (int d = 0; d < head_dim; d++) s += qh[d] * k[d];
                s *= scale;
                scores[j - first] = s;
                local_max = fmaxf(local_max, s);
            }
            local_max = warp_max(local_max);
            if ((threadIdx.x & 31) == 0) reduce[threadIdx.x >> 5] = local_max;
            __syncthreads();
            float m = -3.0e38f;
            for (int w = 0; w < (int)((blockDim.x + 31) >> 5); w++) m = fmaxf(m, reduce[w]);
            __syncthreads();
            float local_sum = 0.0f;
            for (int j = first + threadIdx.x; j <= last; j += blockDim.x) {
                float e = expf(scores[j - first] - m);
                scores[j - first] = e;
                local_sum += e;
            }
            float inv = 1.0f / block_sum(local_sum, reduce);
            float* o = out + ((long long)t * heads + h) * head_dim;
            for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
                float acc = 0.0f;
                for (int j = first; j <= last; j++) acc += scores[j - first] * inv * v_cache[(long long)j * row + kv * head_dim + d];
                o[d] = acc;
            }
        }
        """#),
        ("router", #"""
        // Softmax over each token's router logits, the k largest (lower expert index on ties), optionally
        // renormalised: the CPU's route() with softmax top-k. One thread per token (expert counts are small).
        extern "C" __global__ void router_topk_f32(const float* logits, int tokens, int experts, int k, int normalize,
                                                   int* chosen, float* weights) {
            int t = blockIdx.x * blockDim.x + threadIdx.x;
            if (t >= tokens) return;
            const float* l = logits + (long long)t * experts;
            float m = -3.0e38f;
            for (int e = 0; e < experts; e++) m = fmaxf(m, l[e]);
            float total = 0.0f;
            for (int e = 0; e < experts; e++) total += expf(l[e] - m);
            float picked_sum = 0.0f;
            for (int i = 0; i < k; i++) {
                int best = -1;
                float best_p = -1.0f;
                for (int e = 0; e < experts; e++) {
                    bool taken = false;
                    for (int j = 0; j < i; j++) taken = taken || chosen[t * k + j] == e;
                    float p = expf(l[e] - m) / total;
                    if (!taken && p > best_p) { best = e; best_p = p; }
                }
                chosen[t * k + i] = best;
                weights[t * k + i] = best_p;
                picked_sum += best_p;
            }
            if (normalize) for (int i = 0; i < k; i++) weights[t * k + i] /= picked_sum;
        }
        """#),
    ]

    /// The full compilation unit of kernel `name`.
    public static func unit(_ source: String) -> String { prelude + "\n" + source }

    /// A stable hash of a source (FNV-1a), for the compiled-kernel cache.
    public static func hash(_ source: String) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in source.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return String(h, radix: 16)
    }
}

/// Compiled kernels on disk, by GPU architecture and source hash, so NVRTC runs once per machine
/// and kernel version: `$XDG_CACHE_HOME/switchyard/cuda` or `~/.cache/switchyard/cuda`.
public struct KernelCache {
    public let folder: String
    let compiler: NVRTC

    public init(compiler: NVRTC, folder: String? = nil) {
        self.compiler = compiler
        if let folder {
            self.folder = folder
        } else if let xdg = getenv("XDG_CACHE_HOME") {
            self.folder = String(cString: xdg) + "/switchyard/cuda"
        } else {
            self.folder = String(cString: getenv("HOME") ?? strdup("/tmp")) + "/.cache/switchyard/cuda"
        }
    }

    /// The cubin of kernel `name` for `architecture`, compiled now or read from the cache.
    public func cubin(_ name: String, architecture: String) throws(CUDAError) -> [UInt8] {
        guard let source = KernelSources.all.first(where: { $0.name == name })?.source else { throw CUDAError("no kernel named \(name)") }
        let unit = KernelSources.unit(source)
        let path = "\(folder)/\(name)-\(architecture)-\(KernelSources.hash(unit)).cubin"
        if let f = fopen(path, "rb") {
            defer { fclose(f) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = fread(&chunk, 1, chunk.count, f)
                bytes += chunk[0..<n]
                if n < chunk.count { break }
            }
            if !bytes.isEmpty { return bytes }
        }
        let compiled = try compiler.compile(unit, name: name + ".cu", architecture: architecture)
        _ = system("mkdir -p '\(folder)'")
        if let f = fopen(path + ".tmp", "wb") {
            fwrite(compiled, 1, compiled.count, f)
            fclose(f)
            rename(path + ".tmp", path)
        }
        return compiled
    }
}
