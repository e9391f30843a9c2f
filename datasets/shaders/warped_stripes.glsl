// Stripes under a sinusoidal warp: sharp, oriented, zebra-like bands in several colours.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = kd_rot(6.2831 * iParams[0].x) * (fragCoord / iResolution.y);
    float amp = 0.05 + 0.3 * iParams[0].y;
    float x = uv.x + amp * sin(uv.y * (3.0 + 10.0 * iParams[0].z) + iTime);
    float bands = x * (4.0 + 16.0 * iParams[0].w);
    float id = floor(bands);
    float edge = smoothstep(0.0, 0.08, fract(bands)) * smoothstep(1.0, 0.92, fract(bands));
    fragColor = vec4(kd_palette(kd_hash11(id + floor(iTime))) * (0.5 + 0.5 * edge), 1.0);
}
