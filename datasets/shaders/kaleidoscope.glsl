// Kaleidoscope: polar coordinates folded into n mirrored wedges, filled with noise shapes.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - 0.5 * iResolution.xy) / iResolution.y;
    float n = floor(3.0 + 9.0 * iParams[0].x);
    float a = atan(uv.y, uv.x) + iTime * 0.1;
    float r = length(uv);
    float wedge = 6.2831 / n;
    a = abs(mod(a, wedge) - 0.5 * wedge);
    vec2 p = r * vec2(cos(a), sin(a)) * (3.0 + 6.0 * iParams[0].y) + iTime;
    float v = kd_fbm(p, 4);
    float rings = 0.5 + 0.5 * cos(r * (10.0 + 30.0 * iParams[0].z) - 6.0 * v);
    fragColor = vec4(kd_palette(v + 0.3 * rings) * (0.5 + 0.5 * rings), 1.0);
}
