// Newton fractal: basins of attraction of Newton's method for z^n - 1, shaded by iteration count.
vec2 cmul(vec2 a, vec2 b) { return vec2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x); }
vec2 cdiv(vec2 a, vec2 b) { return vec2(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y) / dot(b, b); }
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 z = kd_rot(iTime) * (fragCoord - 0.5 * iResolution.xy) / iResolution.y * (1.0 + 3.0 * iParams[0].x)
             + (iMouse.xy / iResolution.xy - 0.5);
    int n = 3 + int(iParams[0].y * 3.0);
    float steps = 0.0;
    for (int i = 0; i < 40; i++) {
        vec2 p = vec2(1.0, 0.0);
        for (int k = 1; k < 6; k++) if (k < n) p = cmul(p, z);
        vec2 f = cmul(p, z) - vec2(1.0, 0.0);
        vec2 step = cdiv(f, float(n) * p + 1e-6);
        z -= step;
        if (dot(step, step) < 1e-6) break;
        steps += 1.0;
    }
    float root = fract(atan(z.y, z.x) / 6.2831 + 1.0);
    vec3 col = kd_palette(root * (0.5 + iParams[0].z)) * (1.0 - 0.7 * clamp(steps / 20.0, 0.0, 1.0));
    fragColor = vec4(col, 1.0);
}
