// Julia sets z -> z^2 + c with c on a circle near the Mandelbrot boundary; smooth iteration count colouring.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - 0.5 * iResolution.xy) / iResolution.y;
    float angle = 6.2831 * iParams[0].x;
    vec2 c = (0.7 + 0.12 * iParams[0].y) * vec2(cos(angle), sin(angle));
    vec2 z = kd_rot(iTime) * uv * (3.2 / (1.0 + 3.0 * iParams[0].z));
    float n = 0.0;
    for (int i = 0; i < 96; i++) {
        z = vec2(z.x * z.x - z.y * z.y, 2.0 * z.x * z.y) + c;
        if (dot(z, z) > 64.0) break;
        n += 1.0;
    }
    float s = n < 96.0 ? n - log2(log2(dot(z, z))) + 4.0 : 0.0;
    vec3 col = n < 96.0 ? kd_palette(s * (0.02 + 0.05 * iParams[0].w)) : vec3(0.05);
    fragColor = vec4(col, 1.0);
}
